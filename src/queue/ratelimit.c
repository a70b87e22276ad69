/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  The queue workers' per-merchant rate limit: at most wxpay.rate_limit
 *	  requests started in any one second for one mchid, across every
 *	  database of the cluster.
 *
 * Each request (a stop, or a query that settles an unknown outcome) takes
 * one token the moment it is about to be sent.  WeChat Pay limits requests
 * per merchant, not per database: a merchant configured in two databases
 * has one budget, so the windows live in shared memory (shmem.c gives the
 * area and its LWLock), one per mchid, WXPAY_RATE_MERCHANTS of them (the
 * least recently used one is taken over when all are in use).
 *
 * A window counts the requests started in each of the last RATE_RING
 * slices of time, RATE_RING - 1 slices making one second.  A request may
 * start when the count over the whole ring is below the limit; any one
 * second lies within the ring's slices, so no one-second window ever holds
 * more than the limit (the price: up to one slice, 1/63 s, of budget
 * unused).  Counting at the start, request by request, means a query and
 * the stop after it are two requests, whatever else happens in between.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "storage/lwlock.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

#define RATE_RING		WXPAY_RATE_SLOTS
#define RATE_SLICE_US	(USECS_PER_SEC / (RATE_RING - 1))

/* settings (defined in RateLimitInit) */
int			wxpay_rate_limit = 50;	/* requests per second per merchant */

typedef struct RateWindow
{
	char		mchid[64];		/* "": a free window */
	int64		last_slice;		/* the newest slice counted */
	int32		counts[RATE_RING];
} RateWindow;

StaticAssertDecl(sizeof(RateWindow) * WXPAY_RATE_MERCHANTS <= WXPAY_RATE_AREA_SIZE,
				 "the rate windows do not fit their shared area");

static RateWindow *RateFind(RateWindow *ws, const char *mchid);

/*
 * Defines the rate limit's setting.
 */
void
RateLimitInit(void)
{
	DefineCustomIntVariable("wxpay.rate_limit",
							"Sets the most requests per second the background workers send for one merchant.",
							"Counted per mchid across every database of the cluster.  Zero means no limit.",
							&wxpay_rate_limit,
							50, 0, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
}

/* mchid's window (lock held exclusively), taking over the oldest if new. */
static RateWindow *
RateFind(RateWindow *ws, const char *mchid)
{
	RateWindow *oldest = NULL;

	for (int i = 0; i < WXPAY_RATE_MERCHANTS; i++)
	{
		RateWindow *w = &ws[i];

		if (strncmp(w->mchid, mchid, sizeof(w->mchid)) == 0 && w->mchid[0] != '\0')
			return w;
		if (oldest == NULL || w->mchid[0] == '\0' ||
			(oldest->mchid[0] != '\0' && w->last_slice < oldest->last_slice))
			oldest = w;
	}
	memset(oldest, 0, sizeof(RateWindow));
	strlcpy(oldest->mchid, mchid, sizeof(oldest->mchid));
	return oldest;
}

/*
 * May a request of merchant mchid start now?  If so, it is counted.  If
 * not, *wait_ms says when to ask again.
 */
bool
wxpay_rate_take(const char *mchid, TimestampTz now, long *wait_ms)
{
	LWLock	   *lock;
	RateWindow *ws = (RateWindow *) wxpay_rate_area(&lock);
	RateWindow *w;
	int64		slice = now / RATE_SLICE_US;
	int64		sum = 0;
	bool		ok;

	if (wxpay_rate_limit <= 0)
		return true;
	LWLockAcquire(lock, LW_EXCLUSIVE);
	w = RateFind(ws, mchid);
	/* slices that went by since: empty */
	if (slice - w->last_slice >= RATE_RING)
		memset(w->counts, 0, sizeof(w->counts));
	else
		for (int64 s = w->last_slice + 1; s <= slice; s++)
			w->counts[s % RATE_RING] = 0;
	if (slice > w->last_slice)
		w->last_slice = slice;
	for (int i = 0; i < RATE_RING; i++)
		sum += w->counts[i];
	ok = sum < wxpay_rate_limit;
	if (ok)
		w->counts[w->last_slice % RATE_RING]++;
	LWLockRelease(lock);
	if (!ok)
		*wait_ms = (long) (((slice + 1) * RATE_SLICE_US - now) / 1000) + 1;
	return ok;
}
