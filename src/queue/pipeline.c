/*-------------------------------------------------------------------------
 *
 * pipeline.c
 *	  The queue worker's sending pipeline: up to wxpay.worker_concurrency
 *	  requests in flight across merchants, each finished one recorded and
 *	  replaced by the next due one.
 *
 * The pipeline is one wxpay_http_perform_poll() stream (transport.c).  The
 * transport asks PipePoll() for a request whenever a slot is free, and
 * hands every finished request to PipeDone().  No transaction is open while
 * the transport waits on sockets: each of the following is a short
 * transaction of its own, between network waits.
 *
 *	  flush		the outcomes that finished, recorded together (queue.c):
 *				with the next claim, or when nothing more can be sent
 *				now, or once worker_concurrency of them have gathered;
 *				NOTIFY at commit, the condition variable broadcast after;
 *	  claim		due requests of every config with queued ones, up to
 *				worker_concurrency each beyond those already waiting here,
 *				committed with synchronous_commit = on (queue.c) before any
 *				of them is sent, and confirmed by the synchronous standbys:
 *				a cancel of the commit's wait for them leaves the claim
 *				local with only a warning, so the worker looks itself
 *				(PipeClaimReplicated) and makes that its error;
 *	  config	a config's keys, looked up when first needed and again
 *				after a committed change (shmem.c's generation counter,
 *				compared at every poll and kept from one run to the next,
 *				so a change made while the worker slept counts too); each
 *				request keeps a reference-counted copy, so a change never
 *				pulls keys from under a request in flight;
 *	  certs		a certificate refresh (certs.c's prepare and finish); its
 *				download is one more request in the stream, so a backlog
 *				never postpones it and it never blocks the stops.
 *
 * The next request.  PipePoll() picks the config with requests waiting that
 * has the fewest in flight (ties in turn), skipping configs at their cap
 * and merchants at their rate limit (ratelimit.c: each query and each stop
 * takes a token as it is about to leave).  With more than one config in
 * wxpay_config (counted at a claim after each change of it), no config may
 * hold the last quarter of the slots (at least one), whether or not the
 * others have work at the moment, and a config's certificate download
 * counts toward its cap like its stops: a merchant whose requests hang
 * never takes the slot another merchant's next stop needs, not even the
 * first stop of a merchant that was idle until then.  That needs two slots,
 * hence wxpay.worker_concurrency's minimum of 2.  The request is built
 * (PipeBuildCall) and signed at that moment, never earlier.
 *
 * One attempt of one request (PipeAttemptFinished decides, doc/queue.md
 * "How the worker sends and retries"):
 *	  the row has the unknown mark	query first:
 *		  stopped by the merchant	succeeded, the plan as result
 *		  still there, or 404		the stop follows (same attempt); the
 *									mark stays, for the earlier stop may
 *									still be applied after this answer
 *		  anything else				queued again, the mark kept
 *	  the stop
 *		  2xx verified				succeeded
 *		  4xx but 429, no mark		failed with WeChat Pay's code
 *		  4xx but 429, the mark		query again (same attempt): stopped by
 *									the merchant, succeeded; anything else,
 *									queued again with WX003, the mark kept
 *									(the earlier stop may still be applied,
 *									so a refusal decides nothing)
 *		  429, WX004				queued again, the mark as it was
 *		  WX003 (5xx, timeout, ...)	queued again, the mark set, not before
 *									wxpay.reconcile_delay
 *	  config unusable (WX001, 42704) before sending: queued again, the mark
 *	  as it was; bad input (class 22): failed.
 * After wxpay.max_attempts attempts a retry is final: failed, and with the
 * mark set, error_code WX003 (the plan may or may not be stopped).  So the
 * mark is cleared only by a success: a row that had it ends succeeded or
 * failed with WX003, never with WeChat Pay's code.
 *
 * Errors.  Only those documented per-request failures become outcomes.
 * Anything else (a cancel, lock_timeout, a deadlock, out of memory, an SPI
 * error) propagates to the worker (worker.c), whose recovery calls
 * wxpay_pipeline_abandon(): outcomes already decided are recorded (those
 * recorded by a transaction that the error rolled back too: they are kept
 * until a commit of them), requests claimed but never sent are released
 * (queued again as they were), and those in flight are left in "sending"
 * for reconcile (queue.c), their mark intact.
 *
 * Memory.  Each request has a small memory context of its own (its signed
 * request, its answer), deleted when its attempt is decided; outcomes wait
 * for the next flush in a context reset by each flush; everything else of a
 * run lives in the run's context, which the caller resets.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/evp.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "replication/syncrep.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "namehash.h"
#include "wxpay_signplan.h"

/* settings (defined in PipelineInit) */
int			wxpay_worker_concurrency = 8;
int			wxpay_retry_base_delay = 1000;	/* ms */
int			wxpay_retry_max_delay = 600 * 1000;	/* ms */

#define CERT_RETRY_MS		(5 * 60 * 1000)
#define CERT_LIST_MS		(60 * 1000)
#define CLAIM_RECHECK_MS	1000

/*
 * How far the claims run ahead of the sends: a claim is wanted once fewer
 * than wxpay.worker_concurrency claimed requests wait for a slot, and it
 * tops a config's line up to CLAIM_AHEAD times that.  Each claim commits
 * with a WAL flush the sends wait for, so the deeper the line, the fewer
 * flushes per request (doc/queue.md "How the worker sends and retries");
 * what a crash leaves of it unsent is queried before it is sent.
 */
#define CLAIM_AHEAD			2
#define PURGE_INTERVAL_MS	(60 * 1000)
#define PIPE_ROOTKEY_HOLD_MS	5000	/* a config held for its root key: retry after */

/* a reference-counted copy of a config, for requests in flight */
typedef struct PipeConfigCopy
{
	MemoryContext cxt;
	WxpayConfig cfg;
	int			refs;
	bool		retired;		/* a newer copy exists: free at refs 0 */
} PipeConfigCopy;

typedef struct PipeConfig PipeConfig;

typedef enum PipeStage
{
	PIPE_QUERY,					/* settle an earlier attempt first */
	PIPE_STOP,
	PIPE_RECHECK				/* the stop was refused, but an earlier one
								 * may have landed since: look again */
} PipeStage;

typedef struct PipeItem
{
	MemoryContext cxt;			/* the item and its request */
	WxpayQueueRow row;
	char	   *stop_reason;	/* checked, UTF-8 */
	PipeConfig *pc;
	PipeConfigCopy *copy;		/* while signed or in flight */
	bool		unknown;		/* the mark, as this attempt knows it */
	WxpayCallResult refused;	/* PIPE_RECHECK: the stop's refusal (strings
								 * in cxt) */
	bool		sent_any;		/* a request of this attempt was started */
	PipeStage	stage;
	TimestampTz started;
	struct PipeItem *next;		/* in its config's waiting list */
	WxpayCall	call;
} PipeItem;

struct PipeConfig
{
	char	   *name;
	PipeConfigCopy *copy;		/* current, or NULL */
	bool		failed;			/* the lookup failed (this generation) */
	WxpayCallResult failure;
	PipeItem   *head;			/* claimed, waiting to be sent */
	PipeItem   *tail;
	int			nwaiting;
	int			inflight;
	TimestampTz rate_until;		/* its merchant is at the rate limit, or
								 * rootkey_held */
	bool		rootkey_held;	/* its keys are sealed under a root key the
								 * server lacks: its requests wait, unsent
								 * and uncounted, until a reload or
								 * PIPE_ROOTKEY_HOLD_MS (config/rootkey.c) */
};

/* when each config's platform certificates are next refreshed */
typedef struct CertSchedule
{
	char		name[NAMEDATALEN * 2];
	TimestampTz next;
} CertSchedule;

typedef struct Pipe
{
	MemoryContext cxt;			/* the run */
	MemoryContext tmp;			/* scratch, reset by every poll */
	MemoryContext out_cxt;		/* outcomes waiting for the flush */
	Oid			nspoid;
	char	   *q;
	TupleDesc	plan_desc;
	Oid			plan_type;
	int			cancel_attno;
	List	   *configs;		/* PipeConfig * */
	int			rr;				/* where the next turn starts */
	WxpayQueueOutcome *outs;
	int			nouts;
	int			capouts;
	int			inflight;
	int			handled;
	uint64		gens[WXPAY_NUM_WAKES];
	uint64		rootkey_gen;	/* config/rootkey.c's generation seen */
	bool		maybe_more;		/* the last claim may have left due rows */
	int			nconfigs_all;	/* rows in wxpay_config; -1: count at the
								 * next claim (a run's start, a change) */
	TimestampTz next_due;
	TimestampTz claim_after;	/* nothing claimable before this */
	/* certificates */
	List	   *cert_names;
	TimestampTz cert_list_at;
	WxpayCertRefresh *cert;		/* the refresh in flight, or NULL */
	CertSchedule *cert_sched;
	PipeConfig *cert_pc;		/* its config, whose cap it counts toward */
} Pipe;

/* local state */
static Pipe *Current = NULL;
static uint64 SeenGens[WXPAY_NUM_WAKES];	/* as of the last look, across runs */
static bool SeenGensValid = false;
static HTAB *CertSchedules = NULL;	/* by config name, for the worker's life */
static TimestampTz NextPurge = 0;
static TimestampTz NextWork = DT_NOEND;	/* as the last run left it */

static WxpayHttpRequest *PipePoll(void *arg, long *retry_ms);
static void PipeDone(WxpayHttpRequest *req, void *arg);
static void PipeTxnBegin(Pipe *p, const char *activity);
static void PipeTxnEnd(Pipe *p);
static bool PipeRequestError(int sqlstate);
static void PipeFailure(ErrorData *edata, WxpayCallResult *res);
static void PipeGenerations(Pipe *p);
static void PipeFlush(Pipe *p);
static bool PipeClaimWanted(Pipe *p, TimestampTz now);
static void PipeClaim(Pipe *p);
static bool PipeClaimReplicated(XLogRecPtr lsn);
static PipeConfig *PipeConfigFind(Pipe *p, const char *name);
static bool PipeConfigReady(Pipe *p, PipeConfig *pc);
static PipeConfigCopy *PipeConfigCopyMake(const WxpayConfig *src,
										  MemoryContext parent);
static void PipeConfigCopyFree(void *arg);
static void PipeConfigCopyRelease(PipeConfigCopy *copy);
static int	PipeCap(Pipe *p);
static WxpayHttpRequest *PipeNext(Pipe *p, TimestampTz now, long *retry_ms);
static void PipeBuildCall(PipeItem *it, WxpayOperation op);
static bool PipeSign(Pipe *p, PipeItem *it);
static void PipeAttemptFinished(Pipe *p, PipeItem *it, WxpayOperation op,
								bool ok, WxpayCallResult *res,
								bool failed_over, long elapsed_ms);
static void PipeFinish(Pipe *p, PipeItem *it, WxpayQueueFate fate,
					   WxpayCallResult *res, HeapTuple result);
static long PipeBackoff(int attempts);
static void PipeWaitingPush(PipeConfig *pc, PipeItem *it, bool front);
static PipeItem *PipeWaitingPop(PipeConfig *pc);
static void PipeDefer(Pipe *p, PipeConfig *pc, int delay_ms);
static WxpayHttpRequest *PipeCertStart(Pipe *p, TimestampTz now, long *retry_ms);
static void PipeCertFinish(Pipe *p);
static CertSchedule *CertScheduleFind(Pipe *p, const char *name);
static void PipeCheckClaimed(Pipe *p, PipeConfig *pc, WxpayQueueRow *r);

/* ----------------------------------------------------------------
 *		The run
 * ----------------------------------------------------------------
 */

/*
 * Serve the queue until nothing is due and nothing is in flight.  Returns
 * how many attempts were decided; *sleep_ms says when something is due next
 * (it is only ever lowered).  Memory in cxt, which the caller resets.
 */
int
wxpay_pipeline_run(Oid nspoid, MemoryContext cxt, long *sleep_ms)
{
	Pipe	   *p;
	TimestampTz now;
	long		secs;
	int			usecs;
	TimestampTz wake_at;

	MemoryContextSwitchTo(cxt);
	p = palloc0(sizeof(Pipe));
	p->cxt = cxt;
	p->out_cxt = AllocSetContextCreate(cxt, "wxpay pipeline outcomes",
									   ALLOCSET_DEFAULT_SIZES);
	p->tmp = AllocSetContextCreate(cxt, "wxpay pipeline scratch",
								   ALLOCSET_DEFAULT_SIZES);
	p->nspoid = nspoid;
	p->capouts = 64;
	p->outs = palloc(sizeof(WxpayQueueOutcome) * p->capouts);
	p->maybe_more = true;
	p->next_due = DT_NOEND;
	p->cert_list_at = 0;
	/*
	 * The counters as the last run left them, not as they are now: a change
	 * committed while the worker slept is then seen by the first poll
	 * (certificates refreshed at once, keys reloaded).  The first run of a
	 * worker starts from nothing cached, so it starts from the present.
	 */
	if (!SeenGensValid)
		wxpay_worker_generations(SeenGens);
	SeenGensValid = true;
	memcpy(p->gens, SeenGens, sizeof(SeenGens));
	p->rootkey_gen = wxpay_rootkey_generation();
	p->nconfigs_all = -1;

	/* the answer's row type, kept for the whole run */
	PipeTxnBegin(p, "looking up types");
	MemoryContextSwitchTo(cxt);
	p->q = wxpay_queue_table(nspoid);
	/* signing and reading answers happen outside transactions: look up now */
	wxpay_encoding_prepare();
	p->plan_type = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
								   CStringGetDatum("wxpay_sign_plan"),
								   ObjectIdGetDatum(nspoid));
	if (!OidIsValid(p->plan_type))
		elog(ERROR, "type wxpay_sign_plan is missing");
	MemoryContextSwitchTo(cxt);
	p->plan_desc = lookup_rowtype_tupdesc_copy(p->plan_type, -1);
	MemoryContextSwitchTo(p->tmp);
	for (int a = 0; a < p->plan_desc->natts; a++)
		if (strcmp(NameStr(TupleDescAttr(p->plan_desc, a)->attname), "cancel_sign_type") == 0)
			p->cancel_attno = a + 1;
	if (wxpay_stop_request_retention > 0 && GetCurrentTimestamp() >= NextPurge)
	{
		wxpay_queue_purge(p->q);
		NextPurge = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												PURGE_INTERVAL_MS);
	}
	PipeTxnEnd(p);

	Current = p;
	for (;;)
	{
		long		wait_ms = -1;
		ListCell   *lc;

		wxpay_http_perform_poll(wxpay_worker_concurrency, PipePoll, PipeDone, p);
		if (p->nouts > 0)
			PipeFlush(p);

		/*
		 * The stream ends when nothing is in flight and nothing may start
		 * now; requests still waiting wait for their merchant's rate limit.
		 */
		now = GetCurrentTimestamp();
		foreach(lc, p->configs)
		{
			PipeConfig *pc = lfirst(lc);

			if (pc->nwaiting == 0)
				continue;
			TimestampDifference(now, pc->rate_until, &secs, &usecs);
			if (wait_ms < 0 || secs * 1000 + usecs / 1000 + 1 < wait_ms)
				wait_ms = secs * 1000 + usecs / 1000 + 1;
		}
		if (wait_ms < 0)
			break;
		pgstat_report_activity(STATE_RUNNING, "waiting for the rate limit");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(wait_ms, 1), wxpay_wait_event(WXPAY_WAIT_RATE_LIMIT));
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	Current = NULL;

	/* asleep until the next due request or certificate refresh */
	now = GetCurrentTimestamp();
	wake_at = p->next_due;
	if (CertSchedules != NULL && wxpay_certificate_refresh_interval > 0)
	{
		HASH_SEQ_STATUS hs;
		CertSchedule *cs;

		hash_seq_init(&hs, CertSchedules);
		while ((cs = hash_seq_search(&hs)) != NULL)
			wake_at = Min(wake_at, cs->next);
		/* the next due request or refresh, for a worker that leaves */
		NextWork = wake_at;
		wake_at = Min(wake_at, TimestampTzPlusMilliseconds(p->cert_list_at, CERT_LIST_MS));
	}
	else
		NextWork = wake_at;
	if (p->claim_after > now && wake_at < p->claim_after)
		wake_at = p->claim_after;
	if (wake_at != DT_NOEND)
	{
		TimestampDifference(now, wake_at, &secs, &usecs);
		*sleep_ms = Min(*sleep_ms, secs * 1000 + usecs / 1000 + 1);
	}
	return p->handled;
}

/*
 * When the last run's next request or certificate refresh is due
 * (DT_NOEND: none known), for a worker that leaves while idle.
 */
TimestampTz
wxpay_pipeline_next_work(void)
{
	return NextWork;
}

/*
 * After an error in the worker (its transaction already aborted): record
 * what was decided, release what was claimed and never sent.  Requests in
 * flight stay in "sending" for reconcile.
 */
void
wxpay_pipeline_abandon(void)
{
	Pipe	   *p = Current;
	WxpayQueueRow **rows;
	int			n = 0;
	ListCell   *lc;

	Current = NULL;
	if (p == NULL)
		return;

	foreach(lc, p->configs)
		n += ((PipeConfig *) lfirst(lc))->nwaiting;
	rows = MemoryContextAlloc(p->cxt, sizeof(WxpayQueueRow *) * Max(n, 1));
	n = 0;
	foreach(lc, p->configs)
	{
		PipeConfig *pc = lfirst(lc);

		for (PipeItem *it = pc->head; it != NULL; it = it->next)
		{
			if (it->sent_any)
				continue;		/* a query went out: reconcile decides */
			rows[n++] = &it->row;
		}
	}
	if (n == 0 && p->nouts == 0)
		return;

	PipeTxnBegin(p, "releasing stop requests");
	if (p->nouts > 0)
		wxpay_queue_record(p->q, p->outs, p->nouts, p->plan_type);
	wxpay_queue_release(p->q, rows, n);
	PipeTxnEnd(p);
	p->nouts = 0;
	wxpay_worker_broadcast_finished();
}

/*
 * A short transaction with SPI and a snapshot; allocations go to the run's
 * context, which outlives it.
 */
static void
PipeTxnBegin(Pipe *p, const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	wxpay_spi_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	MemoryContextSwitchTo(p->tmp);
}

/*
 * Defines the settings of the sending pipeline.
 */
void
PipelineInit(void)
{
	DefineCustomIntVariable("wxpay.worker_concurrency",
							"Sets how many requests the background worker keeps in flight at once.",
							"At least 2: with more than one config, a quarter of the slots (at least one) is kept from each config, so that a merchant whose requests hang never holds the slot another merchant's next request needs.",
							&wxpay_worker_concurrency,
							8, 2, 64,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.retry_base_delay",
							"Sets the delay before the second attempt of a stop request.",
							"Each further attempt waits twice as long, up to wxpay.retry_max_delay, with random jitter.",
							&wxpay_retry_base_delay,
							1000, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.retry_max_delay",
							"Sets the longest delay between two attempts of a stop request.",
							NULL,
							&wxpay_retry_max_delay,
							600 * 1000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
}

static void
PipeTxnEnd(Pipe *p)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(p->tmp);
}

/*
 * The failures that are properties of one request or its config, and so
 * may become its outcome (doc/queue.md "How the worker sends and retries").
 * Everything else is the worker's error.
 */
static bool
PipeRequestError(int sqlstate)
{
	return sqlstate == ERRCODE_WXPAY_CONFIG_ERROR ||
		sqlstate == ERRCODE_UNDEFINED_OBJECT ||
		sqlstate == ERRCODE_WXPAY_REQUEST_NOT_SENT ||
		ERRCODE_TO_CATEGORY(sqlstate) == ERRCODE_DATA_EXCEPTION;
}

static void
PipeFailure(ErrorData *edata, WxpayCallResult *res)
{
	memset(res, 0, sizeof(WxpayCallResult));
	res->sqlstate = edata->sqlerrcode;
	res->message = edata->message;
	res->detail = edata->detail;
	res->hint = edata->hint;
}

/* What changed since the last look (shmem.c's counters). */
static void
PipeGenerations(Pipe *p)
{
	uint64		gens[WXPAY_NUM_WAKES];
	ListCell   *lc;

	wxpay_worker_generations(gens);
	if (gens[WXPAY_WAKE_QUEUE] != p->gens[WXPAY_WAKE_QUEUE])
	{
		p->maybe_more = true;
		p->claim_after = 0;
	}
	if (gens[WXPAY_WAKE_KEYS] != p->gens[WXPAY_WAKE_KEYS] ||
		wxpay_rootkey_generation() != p->rootkey_gen)
	{
		/* new keys, or a new root key: fresh copies for later requests */
		p->rootkey_gen = wxpay_rootkey_generation();
		wxpay_config_invalidate();
		foreach(lc, p->configs)
		{
			PipeConfig *pc = lfirst(lc);

			if (pc->copy)
			{
				pc->copy->retired = true;
				PipeConfigCopyRelease(pc->copy);
				pc->copy = NULL;
			}
			pc->failed = false;
		}
	}
	if (gens[WXPAY_WAKE_CONFIG] != p->gens[WXPAY_WAKE_CONFIG])
	{
		HASH_SEQ_STATUS hs;
		CertSchedule *cs;

		/* a changed config: its certificates at once (we cannot tell which) */
		if (CertSchedules != NULL)
		{
			hash_seq_init(&hs, CertSchedules);
			while ((cs = hash_seq_search(&hs)) != NULL)
				cs->next = 0;
		}
		p->cert_list_at = 0;
		p->nconfigs_all = -1;	/* a config may have come or gone */
	}
	memcpy(p->gens, gens, sizeof(gens));
	memcpy(SeenGens, gens, sizeof(gens));
}

/* ----------------------------------------------------------------
 *		The transport's callbacks
 * ----------------------------------------------------------------
 */

static WxpayHttpRequest *
PipePoll(void *arg, long *retry_ms)
{
	Pipe	   *p = (Pipe *) arg;
	WxpayHttpRequest *req;
	TimestampTz now;

	MemoryContextSwitchTo(p->tmp);
	MemoryContextReset(p->tmp);
	if (ConfigReloadPending)
	{
		ListCell   *lc;

		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
		/* the root key may be there now: try the held configs at once */
		foreach(lc, p->configs)
		{
			PipeConfig *pc = lfirst(lc);

			if (pc->rootkey_held)
				pc->rate_until = 0;
		}
	}

	PipeGenerations(p);
	now = GetCurrentTimestamp();

	/* certificates: one refresh at a time, among the stops */
	if (p->cert == NULL && wxpay_certificate_refresh_interval > 0 &&
		(req = PipeCertStart(p, now, retry_ms)) != NULL)
		return req;

	/*
	 * Outcomes are recorded together: with the next claim, when nothing
	 * more can be sent now, or once a slot's worth have gathered.
	 */
	for (;;)
	{
		if ((req = PipeNext(p, now, retry_ms)) != NULL)
		{
			if (p->nouts >= wxpay_worker_concurrency)
				PipeFlush(p);
			pgstat_report_activity(STATE_RUNNING,
								   psprintf("sending stop requests: %d in flight",
											p->inflight));
			return req;
		}
		if (!PipeClaimWanted(p, now))
			break;
		PipeClaim(p);
		now = GetCurrentTimestamp();
	}
	if (p->nouts > 0)
		PipeFlush(p);

	/* nothing now: ask again when the next request is due */
	if (p->next_due != DT_NOEND)
	{
		long		secs;
		int			usecs;
		long		ms;

		TimestampDifference(now, p->next_due, &secs, &usecs);
		ms = secs * 1000 + usecs / 1000 + 1;
		if (p->claim_after > now)
			ms = Max(ms, CLAIM_RECHECK_MS);
		if (*retry_ms < 0 || ms < *retry_ms)
			*retry_ms = ms;
	}
	if (p->inflight > 0)
		pgstat_report_activity(STATE_RUNNING,
							   psprintf("waiting for answers: %d in flight",
										p->inflight));
	return NULL;
}

static void
PipeDone(WxpayHttpRequest *req, void *arg)
{
	Pipe	   *p = (Pipe *) arg;
	PipeItem   *it;
	WxpayCallResult res;
	bool		ok;
	long		secs;
	int			usecs;

	if (p->cert != NULL && req == &p->cert->req)
	{
		PipeCertFinish(p);
		return;
	}

	it = (PipeItem *) ((char *) req - offsetof(PipeItem, call.req));
	it->pc->inflight--;
	p->inflight--;
	TimestampDifference(it->started, GetCurrentTimestamp(), &secs, &usecs);

	MemoryContextSwitchTo(it->cxt);
	ok = wxpay_call_finish(&it->call, p->plan_desc, &res);
	PipeAttemptFinished(p, it, it->call.op, ok, &res, req->failed_over,
						secs * 1000 + usecs / 1000);
	MemoryContextSwitchTo(p->tmp);
}

/* ----------------------------------------------------------------
 *		Recording outcomes
 * ----------------------------------------------------------------
 */

static void
PipeFlush(Pipe *p)
{
	PipeTxnBegin(p, "recording outcomes");
	wxpay_queue_record(p->q, p->outs, p->nouts, p->plan_type);
	PipeTxnEnd(p);
	p->nouts = 0;
	MemoryContextReset(p->out_cxt);
	pgstat_report_stat(false);
	/* after the commit: waiting sessions read the outcomes now */
	wxpay_worker_broadcast_finished();
}

/*
 * One attempt of it is decided: queue the outcome for the next flush and
 * free the item.  res describes the failure (NULL for success, with the
 * answer's tuple in result).
 */
static void
PipeFinish(Pipe *p, PipeItem *it, WxpayQueueFate fate, WxpayCallResult *res,
		   HeapTuple result)
{
	WxpayQueueOutcome *o;

	MemoryContextSwitchTo(p->out_cxt);

	if (p->nouts == p->capouts)
	{
		MemoryContextSwitchTo(p->cxt);
		p->capouts *= 2;
		p->outs = repalloc(p->outs, sizeof(WxpayQueueOutcome) * p->capouts);
		MemoryContextSwitchTo(p->out_cxt);
	}
	o = &p->outs[p->nouts++];
	memset(o, 0, sizeof(WxpayQueueOutcome));
	o->id = it->row.id;
	o->fate = fate;
	o->unknown = it->unknown;

	if (fate == WXPAY_QUEUE_SUCCEEDED)
	{
		o->unknown = false;
		o->result = heap_copy_tuple_as_datum(result, p->plan_desc);
		o->http_status = res ? res->http_status : 200;
		o->request_id = (res && res->request_id) ? pstrdup(res->request_id) : NULL;
	}
	else
	{
		int			s = res->sqlstate;

		o->http_status = res->http_status;
		o->request_id = res->request_id ? pstrdup(res->request_id) : NULL;
		o->error_code = pstrdup(res->error_code ? res->error_code : unpack_sql_state(s));
		o->error_message = wxpay_report_text(res);

		if (fate == WXPAY_QUEUE_RETRY && it->row.attempts >= wxpay_max_attempts)
			fate = o->fate = WXPAY_QUEUE_FAILED;
		if (fate == WXPAY_QUEUE_RETRY)
		{
			o->delay_ms = PipeBackoff(it->row.attempts);
			/* let an attempt that may still be in progress finish first */
			if (o->unknown)
				o->delay_ms = Max(o->delay_ms, wxpay_reconcile_delay);
			p->next_due = Min(p->next_due,
							  TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														  o->delay_ms));
		}
		else if (o->unknown && strcmp(o->error_code, "WX003") != 0)
		{
			/* final, but a stop may have reached WeChat Pay: say so */
			o->error_message = psprintf("An earlier attempt's outcome is unknown, so the plan may or may not be stopped; the last attempt ended: %s",
										o->error_message ? o->error_message : o->error_code);
			o->error_code = pstrdup("WX003");
		}
	}
	/* not the item's context, which goes now */
	MemoryContextSwitchTo(p->tmp);

	if (it->copy)
		PipeConfigCopyRelease(it->copy);
	it->copy = NULL;
	p->handled++;
	p->maybe_more = true;		/* a plan it held may have more requests */
	p->claim_after = 0;
	MemoryContextDelete(it->cxt);
}

/*
 * Delay before the attempt after attempt number attempts: exponential from
 * wxpay.retry_base_delay, capped, with "equal jitter" (half fixed, half
 * random) so that a burst of failures does not retry in lockstep.
 */
static long
PipeBackoff(int attempts)
{
	double		d = wxpay_retry_base_delay;

	for (int i = 1; i < attempts && d < wxpay_retry_max_delay; i++)
		d *= 2;
	d = Min(d, (double) wxpay_retry_max_delay);
	return (long) (d / 2 + pg_prng_double(&pg_global_prng_state) * d / 2);
}

/*
 * Every finished query or stop of the queue comes here, once: op, whether
 * it succeeded, its result or failure, whether it went to the backup
 * domain, and how long it took.  Decides what follows (see the top of the
 * file).
 */
static void
PipeAttemptFinished(Pipe *p, PipeItem *it, WxpayOperation op, bool ok,
					WxpayCallResult *res, bool failed_over, long elapsed_ms)
{
	(void) failed_over;			/* in res and in the statistics */
	(void) elapsed_ms;

	wxpay_stat_call(&it->call, WXPAY_STAT_WORKER, ok, res);

	if (op == WXPAY_OP_QUERY)
	{
		if (ok)
		{
			bool		isnull = true;
			Datum		d = (Datum) 0;

			if (p->cancel_attno > 0)
				d = heap_getattr(res->tuple, p->cancel_attno, p->plan_desc, &isnull);
			if (!isnull && strcmp(TextDatumGetCString(d), "MERCHANT") == 0)
			{
				/* an earlier attempt stopped it */
				PipeFinish(p, it, WXPAY_QUEUE_SUCCEEDED, res, res->tuple);
				return;
			}
		}
		else if (!(res->sqlstate == ERRCODE_WXPAY_REQUEST_REJECTED &&
				   res->http_status == 404))
		{
			/* not settled: the mark stays, and so does the unknown outcome */
			res->detail = psprintf("The outcome of an earlier attempt is unknown and the query to settle it failed: %s",
								   wxpay_report_text(res));
			res->classified = true;
			res->error_code = "WX003";
			PipeFinish(p, it, WXPAY_QUEUE_RETRY, res, NULL);
			return;
		}

		if (it->stage == PIPE_RECHECK)
		{
			/*
			 * Refused, and the plan is not stopped by the merchant (or does
			 * not exist) as far as this query can tell.  The stop just
			 * refused did nothing, but the earlier one whose outcome is
			 * unknown may still be applied after this answer, as after any
			 * query: the refusal decides nothing.  Queued again, the mark
			 * kept; once attempts run out the request ends failed with
			 * WX003, never with WeChat Pay's code.
			 */
			WxpayCallResult *r = &it->refused;

			r->detail = psprintf("The stop was refused, but an earlier stop of this request whose outcome is unknown may still be applied: %s",
								 wxpay_report_text(r));
			r->classified = true;
			r->error_code = "WX003";
			PipeFinish(p, it, WXPAY_QUEUE_RETRY, r, NULL);
			return;
		}

		/*
		 * Settled for now: the plan is not stopped (or does not exist), so
		 * the stop follows.  The mark stays: the earlier stop may still be
		 * applied after this answer (WeChat Pay gives no ordering promise),
		 * so a refusal of the stop that follows is checked again, and a
		 * later attempt queries first.
		 */
		it->stage = PIPE_STOP;
		PipeWaitingPush(it->pc, it, true);
		return;
	}

	if (ok)
	{
		PipeFinish(p, it, WXPAY_QUEUE_SUCCEEDED, res, res->tuple);
		return;
	}

	switch (res->sqlstate)
	{
		case ERRCODE_WXPAY_REQUEST_REJECTED:
			/* an answer: this stop was decided, the plan not stopped by it */
			if (it->unknown && res->http_status != 429)
			{
				/*
				 * ... but an earlier stop of this request may have been
				 * applied since the query that settled it (the refusal may
				 * even say the plan is already stopped): a query decides
				 * between that and the refusal.
				 */
				it->refused = *res;
				it->refused.tuple = NULL;
				it->stage = PIPE_RECHECK;
				PipeWaitingPush(it->pc, it, true);
				break;
			}
			PipeFinish(p, it, res->http_status == 429 ?
					   WXPAY_QUEUE_RETRY : WXPAY_QUEUE_FAILED, res, NULL);
			break;
		case ERRCODE_WXPAY_REQUEST_NOT_SENT:
			/* nothing left: the mark is what it was before this stop */
			PipeFinish(p, it, WXPAY_QUEUE_RETRY, res, NULL);
			break;
		default:
			/* WX003: the stop may have been acted on */
			it->unknown = true;
			if (res->error_code == NULL)
				res->error_code = "WX003";
			PipeFinish(p, it, WXPAY_QUEUE_RETRY, res, NULL);
			break;
	}
}

/* ----------------------------------------------------------------
 *		Claiming
 * ----------------------------------------------------------------
 */

static bool
PipeClaimWanted(Pipe *p, TimestampTz now)
{
	int			waiting = 0;
	ListCell   *lc;

	/*
	 * Enough in hand that could be sent now: claim again when fewer than a
	 * slot-full wait (CLAIM_AHEAD).  Requests of a config at its cap or its
	 * rate limit do not count, so that they never keep other merchants'
	 * requests unclaimed.
	 */
	foreach(lc, p->configs)
	{
		PipeConfig *pc = lfirst(lc);

		if (pc->inflight < PipeCap(p) && pc->rate_until <= now)
			waiting += pc->nwaiting;
	}
	if (waiting >= wxpay_worker_concurrency)
		return false;
	if (now < p->claim_after)
		return false;
	/* another database waits for this worker's place: finish, claim no more */
	if (wxpay_worker_yield_wanted())
		return false;
	return p->maybe_more || now >= p->next_due;
}

/*
 * One claimed request joins its config's line, its input checked in a
 * subtransaction (the stop reason may need the database's encoding
 * conversion); bad input never becomes good, so it fails at once.  A
 * function of its own so that no caller's loop variable lives across the
 * PG_TRY.
 */
static void
PipeCheckClaimed(Pipe *p, PipeConfig *pc, WxpayQueueRow *r)
{
	MemoryContext icxt = AllocSetContextCreate(p->cxt, "wxpay request",
											   ALLOCSET_SMALL_SIZES);
	PipeItem   *it = MemoryContextAllocZero(icxt, sizeof(PipeItem));
	ResourceOwner owner = CurrentResourceOwner;

	it->cxt = icxt;
	it->row = *r;
	it->row.config_name = pc->name;
	it->row.plan_no = MemoryContextStrdup(icxt, r->plan_no);
	it->row.sub_mchid = r->sub_mchid ? MemoryContextStrdup(icxt, r->sub_mchid) : NULL;
	it->row.stop_reason = NULL;
	it->pc = pc;
	it->unknown = r->unknown;
	it->stage = r->unknown ? PIPE_QUERY : PIPE_STOP;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(icxt);
	PG_TRY();
	{
		wxpay_check_plan_no_arg(it->row.plan_no);
		it->stop_reason = wxpay_check_stop_reason_arg(r->stop_reason);
		ReleaseCurrentSubTransaction();
		CurrentResourceOwner = owner;
		MemoryContextSwitchTo(p->tmp);
		PipeWaitingPush(pc, it, false);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		WxpayCallResult res;

		MemoryContextSwitchTo(p->tmp);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		CurrentResourceOwner = owner;
		MemoryContextSwitchTo(p->tmp);
		if (!PipeRequestError(edata->sqlerrcode))
			ReThrowError(edata);
		PipeFailure(edata, &res);
		wxpay_stat_attempt(pc->name, WXPAY_STAT_STOP, WXPAY_STAT_WORKER,
						   WXPAY_STAT_ERROR, false, -1);
		PipeFinish(p, it, WXPAY_QUEUE_FAILED, &res, NULL);
	}
	PG_END_TRY();
}

/* Claim the due requests of every config with queued ones. */
static void
PipeClaim(Pipe *p)
{
	List	   *names;
	ListCell   *lc;
	int			conc = wxpay_worker_concurrency;
	volatile int total = 0;
	int			nconfigs;
	WxpayQueueRow *rows;
	int		   *counts;
	volatile int i = 0;
	volatile int recorded = 0;

	PipeTxnBegin(p, "claiming stop requests");

	/*
	 * The outcomes gathered so far commit with the claim.  They are kept
	 * until that commit: if anything below fails, the worker's recovery
	 * records them again (wxpay_pipeline_abandon).
	 */
	if (p->nouts > 0)
	{
		wxpay_queue_record(p->q, p->outs, p->nouts, p->plan_type);
		recorded = p->nouts;
	}
	names = wxpay_queue_configs(p->q);
	if (p->nconfigs_all < 0)
		p->nconfigs_all = wxpay_config_count(p->nspoid);
	nconfigs = list_length(names);
	rows = palloc(sizeof(WxpayQueueRow) * Max(nconfigs, 1) * CLAIM_AHEAD * conc);
	counts = palloc0(sizeof(int) * Max(nconfigs, 1));
	foreach(lc, names)
	{
		PipeConfig *pc = PipeConfigFind(p, (char *) lfirst(lc));
		int			want = CLAIM_AHEAD * conc - pc->nwaiting;

		if (want > 0)
			counts[i] = wxpay_queue_claim(p->q, pc->name, want, rows + total);
		total += counts[i];
		i++;
	}
	if (total == 0)
		p->next_due = wxpay_queue_next_due(p->q);

	/*
	 * The claimed requests wait for their turn.  Their input is checked now,
	 * each in a subtransaction (the stop reason may need the database's
	 * encoding conversion): bad input never becomes good, so it fails.
	 */
	total = 0;
	i = 0;
	foreach(lc, names)
	{
		PipeConfig *pc = PipeConfigFind(p, (char *) lfirst(lc));

		for (int j = 0; j < counts[i]; j++)
			PipeCheckClaimed(p, pc, &rows[total + j]);
		total += counts[i];
		i++;
	}
	PipeTxnEnd(p);				/* durable before anything is sent */
	if (recorded > 0)
	{
		/* committed; those decided meanwhile (bad input) wait for the next */
		p->nouts -= recorded;
		memmove(p->outs, p->outs + recorded, sizeof(WxpayQueueOutcome) * p->nouts);
		if (p->nouts == 0)
			MemoryContextReset(p->out_cxt);
		pgstat_report_stat(false);
		/* after the commit: waiting sessions read the outcomes now */
		wxpay_worker_broadcast_finished();
	}

	/*
	 * The commit waited for the synchronous standbys, unless a cancel or
	 * SIGTERM cut that wait short: PostgreSQL then only warns, and the
	 * claim is local.  Nothing of it may be sent before they have it.  A
	 * claim that wrote rows wrote its commit record at XactLastCommitEnd,
	 * after every earlier transaction of the worker (releases, outcomes),
	 * so this also covers those.
	 */
	if (total > 0 && !PipeClaimReplicated(XactLastCommitEnd))
	{
		/* SIGTERM or the postmaster gone: exit, reconcile decides */
		CHECK_FOR_INTERRUPTS();
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg_plural("canceling the wait for synchronous replication of %d claimed stop request",
							   "canceling the wait for synchronous replication of %d claimed stop requests",
							   total, (int) total),
				 errdetail("The claim committed locally but the synchronous standbys have not confirmed it, so none of these requests was sent."),
				 errhint("They are sent once a claim of them is confirmed by the synchronous standbys.")));
	}

	if (total == 0)
	{
		/* what is due now is blocked (a plan in flight): not before a finish */
		p->maybe_more = false;
		p->claim_after = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 CLAIM_RECHECK_MS);
	}
	else
		p->maybe_more = true;
}

/*
 * Have the synchronous standbys confirmed the commit record ending at lsn
 * as the claim's synchronous_commit = on asks (flushed there)?  True when
 * no synchronous standby is required.  The same test as PostgreSQL's
 * SyncRepWaitForLSN(), which gives no other way to learn whether its wait
 * ended by confirmation or by an interrupt.
 */
static bool
PipeClaimReplicated(XLogRecPtr lsn)
{
	bool		done;

	if (max_wal_senders == 0 || WalSndCtl == NULL)
		return true;
	LWLockAcquire(SyncRepLock, LW_SHARED);
#ifdef SYNC_STANDBY_DEFINED
	if (WalSndCtl->sync_standbys_status & SYNC_STANDBY_INIT)
		done = !(WalSndCtl->sync_standbys_status & SYNC_STANDBY_DEFINED);
	else						/* not yet read by the checkpointer */
		done = SyncRepStandbyNames == NULL || SyncRepStandbyNames[0] == '\0';
#else
	done = !WalSndCtl->sync_standbys_defined;
#endif
	if (!done)
		done = lsn <= WalSndCtl->lsn[SYNC_REP_WAIT_FLUSH];
	LWLockRelease(SyncRepLock);
	return done;
}

static void
PipeWaitingPush(PipeConfig *pc, PipeItem *it, bool front)
{
	if (front)
	{
		it->next = pc->head;
		pc->head = it;
		if (pc->tail == NULL)
			pc->tail = it;
	}
	else
	{
		it->next = NULL;
		if (pc->tail)
			pc->tail->next = it;
		else
			pc->head = it;
		pc->tail = it;
	}
	pc->nwaiting++;
}

static PipeItem *
PipeWaitingPop(PipeConfig *pc)
{
	PipeItem   *it = pc->head;

	if (it == NULL)
		return NULL;
	pc->head = it->next;
	if (pc->head == NULL)
		pc->tail = NULL;
	it->next = NULL;
	pc->nwaiting--;
	return it;
}

/*
 * Give pc's waiting requests of which nothing was sent back to the queue,
 * due again in delay_ms, their attempt uncounted (a config held for its
 * root key); a request whose query went out stays, held with its config.
 */
static void
PipeDefer(Pipe *p, PipeConfig *pc, int delay_ms)
{
	WxpayQueueRow **rows = palloc(sizeof(WxpayQueueRow *) * Max(pc->nwaiting, 1));
	PipeItem   *keep = NULL;
	PipeItem   *it;
	int			n = 0;

	for (it = pc->head; it != NULL; it = it->next)
		if (!it->sent_any)
			rows[n++] = &it->row;
	if (n == 0)
		return;

	PipeTxnBegin(p, "deferring stop requests");
	wxpay_queue_defer(p->q, rows, n, delay_ms);
	PipeTxnEnd(p);

	/* the deferred ones go; the others keep their order */
	while ((it = PipeWaitingPop(pc)) != NULL)
	{
		if (it->sent_any)
		{
			it->next = keep;
			keep = it;
			continue;
		}
		if (it->copy)
			PipeConfigCopyRelease(it->copy);
		MemoryContextDelete(it->cxt);
	}
	while (keep != NULL)
	{
		it = keep;
		keep = it->next;
		PipeWaitingPush(pc, it, true);
	}
	p->next_due = Min(p->next_due,
					  TimestampTzPlusMilliseconds(GetCurrentTimestamp(), delay_ms));
}

/* ----------------------------------------------------------------
 *		Configs
 * ----------------------------------------------------------------
 */

static PipeConfig *
PipeConfigFind(Pipe *p, const char *name)
{
	ListCell   *lc;
	PipeConfig *pc;
	MemoryContext old;

	foreach(lc, p->configs)
	{
		pc = lfirst(lc);
		if (strcmp(pc->name, name) == 0)
			return pc;
	}
	old = MemoryContextSwitchTo(p->cxt);
	pc = palloc0(sizeof(PipeConfig));
	pc->name = pstrdup(name);
	p->configs = lappend(p->configs, pc);
	MemoryContextSwitchTo(old);
	return pc;
}

/*
 * A current copy of pc's config, looked up in a short transaction when
 * there is none.  False when the config cannot be used (pc->failure says
 * why, for every request of it until the config changes), or with
 * pc->rootkey_held when the server lacks the root key of its keys.
 */
static bool
PipeConfigReady(Pipe *p, PipeConfig *pc)
{
	ErrorData  *volatile held = NULL;

	if (pc->copy != NULL)
		return true;
	if (pc->failed)
		return false;

	wxpay_config_rootkey_failed = false;
	PipeTxnBegin(p, "loading a configuration");
	PG_TRY();
	{
		const WxpayConfig *cfg = wxpay_config_get(pc->name, p->nspoid);

		pc->copy = PipeConfigCopyMake(cfg, p->cxt);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(p->cxt);
		edata = CopyErrorData();
		if (!PipeRequestError(edata->sqlerrcode))
			PG_RE_THROW();
		FlushErrorState();
		if (wxpay_config_rootkey_failed)
			held = edata;
		else
		{
			PipeFailure(edata, &pc->failure);
			pc->failed = true;
		}
	}
	PG_END_TRY();
	if (held != NULL)
	{
		/*
		 * The server lacks the root key that sealed the keys: not the
		 * requests' fault, and it may be fixed by a reload.  They wait,
		 * claimed and unsent, without an attempt counted against them.
		 */
		AbortCurrentTransaction();
		MemoryContextSwitchTo(p->tmp);
		ereport(WARNING,
				(errcode(held->sqlerrcode),
				 errmsg("stop requests of wxpay configuration \"%s\" wait: %s",
						pc->name, held->message),
				 held->detail ? errdetail_internal("%s", held->detail) : 0,
				 held->hint ? errhint("%s", held->hint) : 0));
		FreeErrorData(held);
		pc->rootkey_held = true;
		pc->rate_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 PIPE_ROOTKEY_HOLD_MS);
		PipeDefer(p, pc, PIPE_ROOTKEY_HOLD_MS);
		return false;
	}
	pc->rootkey_held = false;
	if (pc->failed)
	{
		AbortCurrentTransaction();
		MemoryContextSwitchTo(p->tmp);
		return false;
	}
	PipeTxnEnd(p);
	return true;
}

/*
 * A copy of cfg that outlives config.c's cache: strings copied, keys shared
 * (EVP_PKEY_up_ref) and freed with the copy's memory context, a child of
 * the run's (so an error that resets the run frees them too).
 */
static PipeConfigCopy *
PipeConfigCopyMake(const WxpayConfig *src, MemoryContext parent)
{
	MemoryContext cxt = AllocSetContextCreate(parent,
											  "wxpay config copy",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	PipeConfigCopy *c = palloc0(sizeof(PipeConfigCopy));
	MemoryContextCallback *cb = palloc0(sizeof(MemoryContextCallback));
	WxpayConfig *cfg = &c->cfg;

	c->cxt = cxt;
	c->refs = 1;				/* the config's own reference */
	cfg->name = pstrdup(src->name);
	cfg->mchid = pstrdup(src->mchid);
	cfg->serial_no = pstrdup(src->serial_no);
	cfg->base_url = pstrdup(src->base_url);
	cfg->backup_base_url = src->backup_base_url ? pstrdup(src->backup_base_url) : NULL;
	if (src->ca_cert)
	{
		cfg->ca_cert = palloc(src->ca_cert_len + 1);
		memcpy(cfg->ca_cert, src->ca_cert, src->ca_cert_len);
		cfg->ca_cert[src->ca_cert_len] = '\0';
	}
	cfg->ca_cert_len = src->ca_cert_len;
	cfg->keys = palloc0(sizeof(WxpayVerifyKey) * Max(src->nkeys, 1));

	/* from here the keys are ours: freed when the context goes */
	cb->func = PipeConfigCopyFree;
	cb->arg = c;
	MemoryContextRegisterResetCallback(cxt, cb);
	if (src->private_key && EVP_PKEY_up_ref(src->private_key) == 1)
		cfg->private_key = src->private_key;
	for (int i = 0; i < src->nkeys; i++)
	{
		WxpayVerifyKey *k = &cfg->keys[cfg->nkeys];

		k->serial = pstrdup(src->keys[i].serial);
		k->not_before = src->keys[i].not_before;
		k->not_after = src->keys[i].not_after;
		if (src->keys[i].pkey == NULL || EVP_PKEY_up_ref(src->keys[i].pkey) != 1)
			continue;
		k->pkey = src->keys[i].pkey;
		cfg->nkeys++;
	}
	if (cfg->private_key == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	MemoryContextSwitchTo(old);
	return c;
}

static void
PipeConfigCopyFree(void *arg)
{
	PipeConfigCopy *c = (PipeConfigCopy *) arg;

	if (c->cfg.private_key)
		EVP_PKEY_free(c->cfg.private_key);
	c->cfg.private_key = NULL;
	for (int i = 0; i < c->cfg.nkeys; i++)
		if (c->cfg.keys[i].pkey)
			EVP_PKEY_free(c->cfg.keys[i].pkey);
	c->cfg.nkeys = 0;
}

static void
PipeConfigCopyRelease(PipeConfigCopy *copy)
{
	if (--copy->refs <= 0)
		MemoryContextDelete(copy->cxt);
}

/* ----------------------------------------------------------------
 *		The next request
 * ----------------------------------------------------------------
 */

/*
 * The most requests one config may have in flight: all slots when it is
 * the only config, else all but a quarter (at least one), kept free for the
 * others.
 */
static int
PipeCap(Pipe *p)
{
	int			conc = wxpay_worker_concurrency;

	/* not counted since a change: keep the slots, as if there were others */
	return p->nconfigs_all == 0 || p->nconfigs_all == 1 ? conc :
		Max(1, conc - Max(1, conc / 4));
}

static WxpayHttpRequest *
PipeNext(Pipe *p, TimestampTz now, long *retry_ms)
{
	int			conc = wxpay_worker_concurrency;
	int			cap;
	int			n = list_length(p->configs);

	if (n == 0 || p->inflight >= conc)
		return NULL;
	cap = PipeCap(p);

	for (;;)
	{
		PipeConfig *best = NULL;
		int			besti = -1;
		PipeItem   *it;
		long		wait_ms = 0;

		for (int k = 0; k < n; k++)
		{
			int			i = (p->rr + k) % n;
			PipeConfig *pc = list_nth(p->configs, i);

			if (pc->nwaiting == 0 || pc->inflight >= cap)
				continue;
			if (pc->rate_until > now)
			{
				long		secs;
				int			usecs;
				long		ms;

				TimestampDifference(now, pc->rate_until, &secs, &usecs);
				ms = secs * 1000 + usecs / 1000 + 1;
				if (*retry_ms < 0 || ms < *retry_ms)
					*retry_ms = ms;
				continue;
			}
			if (best == NULL || pc->inflight < best->inflight)
			{
				best = pc;
				besti = i;
			}
		}
		if (best == NULL)
			return NULL;
		p->rr = (besti + 1) % n;

		if (!PipeConfigReady(p, best))
		{
			if (best->rootkey_held)
				continue;		/* held: rate_until says until when */
			/* its requests wait, unsent, with their mark as it was */
			it = PipeWaitingPop(best);
			if (best->failure.sqlstate != ERRCODE_UNDEFINED_OBJECT)
				wxpay_stat_attempt(best->name, WXPAY_STAT_STOP, WXPAY_STAT_WORKER,
								   WXPAY_STAT_ERROR, false, -1);
			PipeFinish(p, it, ERRCODE_TO_CATEGORY(best->failure.sqlstate) == ERRCODE_DATA_EXCEPTION ?
					   WXPAY_QUEUE_FAILED : WXPAY_QUEUE_RETRY,
					   &best->failure, NULL);
			continue;
		}
		if (!wxpay_rate_take(best->copy->cfg.mchid, now, &wait_ms))
		{
			best->rate_until = TimestampTzPlusMilliseconds(now, wait_ms);
			continue;
		}

		it = PipeWaitingPop(best);
		if (!PipeSign(p, it))
			continue;
		it->sent_any = true;
		it->started = now;
		best->inflight++;
		p->inflight++;
		return &it->call.req;
	}
}

/*
 * The one place where a queued row becomes a call: what to send, for which
 * plan, with which config.
 */
static void
PipeBuildCall(PipeItem *it, WxpayOperation op)
{
	memset(&it->call, 0, sizeof(WxpayCall));
	it->call.op = op;
	it->call.plan_no = it->row.plan_no;
	it->call.sub_mchid = it->row.sub_mchid;	/* the partner stop and query */
	it->call.stop_reason = op == WXPAY_OP_STOP ? it->stop_reason : NULL;
	it->call.cfg = &it->copy->cfg;
}

/*
 * Build and sign it's next request, now, just before it is sent.  False
 * when that failed for a documented reason (the attempt is then decided).
 */
static bool
PipeSign(Pipe *p, PipeItem *it)
{
	volatile bool ok = true;
	WxpayCallResult res;

	if (it->copy == NULL)
	{
		it->copy = it->pc->copy;
		it->copy->refs++;
	}
	MemoryContextSwitchTo(it->cxt);
	PG_TRY();
	{
		PipeBuildCall(it, it->stage == PIPE_STOP ? WXPAY_OP_STOP : WXPAY_OP_QUERY);
		wxpay_call_prepare(&it->call);
		/* after signing, which clears the request: the answer lives as
		 * long as the request, not in the poll's scratch context */
		it->call.req.resp_cxt = it->cxt;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(p->tmp);
		edata = CopyErrorData();
		if (!PipeRequestError(edata->sqlerrcode))
		{
			/* not sent: back in line, for the worker to release */
			PipeWaitingPush(it->pc, it, true);
			PG_RE_THROW();
		}
		FlushErrorState();
		PipeFailure(edata, &res);
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(p->tmp);
	if (!ok)
		wxpay_stat_attempt(it->pc->name, it->stage == PIPE_STOP ?
						   WXPAY_STAT_STOP : WXPAY_STAT_QUERY,
						   WXPAY_STAT_WORKER, WXPAY_STAT_ERROR, false, -1);
	if (!ok)
		PipeFinish(p, it, ERRCODE_TO_CATEGORY(res.sqlstate) == ERRCODE_DATA_EXCEPTION ?
				   WXPAY_QUEUE_FAILED : WXPAY_QUEUE_RETRY, &res, NULL);
	return ok;
}

/* ----------------------------------------------------------------
 *		Platform certificates: each config with an apiv3_key is refreshed
 *		every wxpay.certificate_refresh_interval, and at once after a change
 *		of wxpay_config, in certs.c's phases; the download is a request of
 *		the stream, between the stops.  A failure is logged and retried
 *		after five minutes (or the interval, if shorter); the certificates
 *		already held stay in use.
 * ----------------------------------------------------------------
 */

static CertSchedule *
CertScheduleFind(Pipe *p, const char *name)
{
	bool		found;
	CertSchedule *cs;

	cs = wxpay_name_entry(&CertSchedules, "wxpay certificate schedules", name,
						  sizeof(cs->name), sizeof(CertSchedule), &found);
	/*
	 * New to this process: when the database's earlier worker said, unless
	 * a config changed since (then, or never said: due at once).  A worker
	 * started on demand for one stop downloads nothing that is not due.
	 */
	if (!found)
		cs->next = wxpay_worker_cert_recall(name, p->gens[WXPAY_WAKE_CONFIG]);
	return cs;
}

/* Set when config cs is next due, here and for the database's next worker. */
static void
CertScheduleSet(Pipe *p, CertSchedule *cs, TimestampTz next)
{
	cs->next = next;
	wxpay_worker_cert_remember(cs->name, p->gens[WXPAY_WAKE_CONFIG], next);
}

/* The download of one due config's certificates, or NULL. */
static WxpayHttpRequest *
PipeCertStart(Pipe *p, TimestampTz now, long *retry_ms)
{
	long		interval_ms = (long) wxpay_certificate_refresh_interval * 1000;
	CertSchedule *due = NULL;
	ListCell   *lc;
	MemoryContext rcxt;
	WxpayCertRefresh *r;
	WxpayCallResult failure;
	volatile bool failed = false;
	PipeConfig *pc = NULL;

	/* the configs with an apiv3_key, looked up now and then */
	if (now >= TimestampTzPlusMilliseconds(p->cert_list_at, CERT_LIST_MS))
	{
		List	   *names;

		PipeTxnBegin(p, "checking platform certificates");
		names = wxpay_cert_refresh_configs(p->nspoid);
		MemoryContextSwitchTo(p->cxt);
		list_free_deep(p->cert_names);
		p->cert_names = NIL;
		for (int i = 0; i < list_length(names); i++)
			p->cert_names = lappend(p->cert_names,
									pstrdup((char *) list_nth(names, i)));
		PipeTxnEnd(p);
		p->cert_list_at = now;
	}

	foreach(lc, p->cert_names)
	{
		CertSchedule *cs = CertScheduleFind(p, (char *) lfirst(lc));

		if (cs->next <= now)
		{
			/*
			 * A download counts toward its config's cap like a stop, so a
			 * merchant whose API hangs never holds the slots kept for the
			 * others with its refresh either.  A config at its cap waits:
			 * the next finished request of it asks again.
			 */
			pc = PipeConfigFind(p, cs->name);
			if (pc->inflight >= PipeCap(p))
				continue;
			due = cs;
			break;
		}
		else
		{
			long		secs;
			int			usecs;
			long		ms;

			TimestampDifference(now, cs->next, &secs, &usecs);
			ms = secs * 1000 + usecs / 1000 + 1;
			if (p->inflight > 0 && (*retry_ms < 0 || ms < *retry_ms))
				*retry_ms = ms;
		}
	}
	if (due == NULL)
		return NULL;

	/* whatever happens below, not again before the retry delay */
	CertScheduleSet(p, due, TimestampTzPlusMilliseconds(now, Min(interval_ms, CERT_RETRY_MS)));

	rcxt = AllocSetContextCreate(p->cxt, "wxpay certificate refresh",
								 ALLOCSET_DEFAULT_SIZES);
	r = MemoryContextAllocZero(rcxt, sizeof(WxpayCertRefresh));
	PipeTxnBegin(p, "preparing a certificate download");
	PG_TRY();
	{
		wxpay_cert_refresh_prepare(r, due->name, p->nspoid, rcxt);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(p->tmp);
		edata = CopyErrorData();
		if (!PipeRequestError(edata->sqlerrcode))
			PG_RE_THROW();
		FlushErrorState();
		/* logged (secret-free); the certificates held are kept */
		PipeFailure(edata, &failure);
		wxpay_stat_attempt(due->name, WXPAY_STAT_REFRESH, WXPAY_STAT_WORKER,
						   WXPAY_STAT_ERROR, false, -1);
		wxpay_report(&failure, WARNING);
		failed = true;
	}
	PG_END_TRY();
	if (failed)
	{
		AbortCurrentTransaction();
		MemoryContextSwitchTo(p->tmp);
		MemoryContextDelete(rcxt);
		return NULL;
	}
	PipeTxnEnd(p);
	p->cert = r;
	p->cert_sched = due;
	p->cert_pc = pc;
	pc->inflight++;
	p->inflight++;
	return &r->req;
}

static void
PipeCertFinish(Pipe *p)
{
	WxpayCertRefresh *r = p->cert;
	CertSchedule *due = p->cert_sched;
	bool		ok;

	p->cert_pc->inflight--;
	p->inflight--;
	PipeTxnBegin(p, "storing platform certificates");
	ok = wxpay_cert_refresh_finish(r);
	wxpay_stat_attempt(due->name, WXPAY_STAT_REFRESH, WXPAY_STAT_WORKER,
					   ok ? WXPAY_STAT_SUCCEEDED : wxpay_stat_outcome(r->result.sqlstate),
					   r->req.failed_over, r->req.elapsed_us);
	if (ok)
	{
		int			nnew = 0;

		for (int i = 0; i < r->ncerts; i++)
			nnew += r->certs[i].is_new ? 1 : 0;
		CertScheduleSet(p, due,
						TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													(long) wxpay_certificate_refresh_interval * 1000));
		ereport(nnew > 0 ? LOG : DEBUG1,
				(errmsg("refreshed the platform certificates of wxpay configuration \"%s\": %d held, %d new",
						due->name, r->ncerts, nnew)));
	}
	else
		wxpay_report(&r->result, WARNING);	/* the certificates held are kept */
	PipeTxnEnd(p);
	MemoryContextDelete(r->cxt);
	p->cert = NULL;
	p->cert_sched = NULL;
	p->cert_pc = NULL;
}
