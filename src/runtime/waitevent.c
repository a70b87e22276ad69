/*-------------------------------------------------------------------------
 *
 * waitevent.c
 *	  The wait events under which the extension's processes sleep.
 *
 * Every WaitLatch, WaitEventSetWait and ConditionVariableSleep of the
 * extension names what it waits for through wxpay_wait_event(), so that
 * pg_stat_activity.wait_event tells an operator whether a backend waits for
 * WeChat Pay's answer, a batch's answers or the queue worker, and whether
 * the worker is idle or pausing.
 *
 * PostgreSQL 17 and later register custom wait event names in shared memory
 * (WaitEventExtensionNew); the name is registered the first time a process
 * asks for it, never in the postmaster (whose _PG_init runs before shared
 * memory exists), and the id is kept per process: registering a name again
 * returns the same id.  Older servers have one event for every extension,
 * "Extension".
 *
 * The lowest layer: calls nothing else of the extension.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/wait_event.h"

#include "wxpay_signplan.h"

#if PG_VERSION_NUM >= 170000
/* the names pg_stat_activity shows, by WxpayWaitKind */
static const char *const WaitEventNames[WXPAY_NUM_WAIT_KINDS] = {
	[WXPAY_WAIT_ANSWER] = "WxpayAnswer",
	[WXPAY_WAIT_BATCH] = "WxpayBatch",
	[WXPAY_WAIT_STOP_REQUEST] = "WxpayWaitStopRequest",
	[WXPAY_WAIT_QUEUE_WAKEUP] = "WxpayQueueWakeup",
	[WXPAY_WAIT_ERROR_PAUSE] = "WxpayErrorPause",
	[WXPAY_WAIT_LAUNCHER] = "WxpayLauncher",
	[WXPAY_WAIT_RATE_LIMIT] = "WxpayRateLimit",
	[WXPAY_WAIT_ROOT_KEY] = "WxpayRootKeyCommand",
};

/* this process's ids, 0 until registered */
static uint32 WaitEventIds[WXPAY_NUM_WAIT_KINDS];
#endif

/*
 * The wait event to pass to WaitLatch() and friends while waiting for kind.
 * Call it before setting up the wait: on 17 and later its first call in a
 * process takes a lock and may raise an error (no room for more names).
 */
uint32
wxpay_wait_event(WxpayWaitKind kind)
{
	Assert(kind >= 0 && kind < WXPAY_NUM_WAIT_KINDS);
#if PG_VERSION_NUM >= 170000
	if (WaitEventIds[kind] == 0)
		WaitEventIds[kind] = WaitEventExtensionNew(WaitEventNames[kind]);
	return WaitEventIds[kind];
#else
	(void) kind;
	return PG_WAIT_EXTENSION;
#endif
}
