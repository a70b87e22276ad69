/*-------------------------------------------------------------------------
 *
 * ratelimit.c
 *	  The queue worker's per-merchant rate limit: at most wxpay.rate_limit
 *	  requests started in any one second for one mchid.
 *
 * Each request (a stop, or a query that settles an unknown outcome) takes
 * one token the moment it is about to be sent; the start times of the last
 * rate_limit requests of each merchant are kept in a ring.  A request may
 * start when the oldest of them is more than a second old.  Counting at the
 * start, request by request, means a query and the stop after it are two
 * requests, whatever else happens in between.
 *
 * State lives in the worker's TopMemoryContext, one entry per mchid; it
 * only ever holds the merchants seen, a few bytes each.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "namehash.h"
#include "wxpay_signplan.h"

/* settings (defined in RateLimitInit) */
int			wxpay_rate_limit = 50;	/* requests per second per merchant */

typedef struct RateWindow
{
	char		mchid[64];		/* hash key */
	int			cap;			/* ring size: the limit it was made for */
	int			head;			/* the oldest start */
	int			n;				/* starts held */
	TimestampTz *starts;
} RateWindow;

static HTAB *RateWindows = NULL;

static RateWindow *RateFind(const char *mchid);

/*
 * Defines the rate limit's setting.
 */
void
RateLimitInit(void)
{
	DefineCustomIntVariable("wxpay.rate_limit",
							"Sets the most requests per second the background worker sends for one merchant.",
							"Zero means no limit.",
							&wxpay_rate_limit,
							50, 0, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
}

static RateWindow *
RateFind(const char *mchid)
{
	bool		found;
	RateWindow *w;

	w = wxpay_name_entry(&RateWindows, "wxpay rate windows", mchid,
						 sizeof(w->mchid), sizeof(RateWindow), &found);
	if (!found)
	{
		w->cap = 0;
		w->head = 0;
		w->n = 0;
		w->starts = NULL;
	}
	if (w->cap != wxpay_rate_limit && wxpay_rate_limit > 0)
	{
		/* the limit changed (or first use): start the window afresh */
		if (w->starts)
			pfree(w->starts);
		w->cap = wxpay_rate_limit;
		w->starts = MemoryContextAlloc(TopMemoryContext,
									   sizeof(TimestampTz) * w->cap);
		w->head = 0;
		w->n = 0;
	}
	return w;
}

/*
 * May a request of merchant mchid start now?  If so, it is counted.  If
 * not, *wait_ms says when one may.
 */
bool
wxpay_rate_take(const char *mchid, TimestampTz now, long *wait_ms)
{
	RateWindow *w;

	if (wxpay_rate_limit <= 0)
		return true;
	w = RateFind(mchid);
	if (w->n == w->cap)
	{
		TimestampTz oldest = w->starts[w->head];

		if (oldest > now - USECS_PER_SEC)
		{
			*wait_ms = (long) ((oldest + USECS_PER_SEC - now) / 1000) + 1;
			return false;
		}
		/* the oldest leaves the window; this one takes its place */
		w->starts[w->head] = now;
		w->head = (w->head + 1) % w->cap;
		return true;
	}
	w->starts[(w->head + w->n) % w->cap] = now;
	w->n++;
	return true;
}
