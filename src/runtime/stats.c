/*-------------------------------------------------------------------------
 *
 * stats.c
 *	  Cumulative statistics of every WeChat Pay call, in shared memory:
 *	  the wxpay_stat view and wxpay_stat_reset().
 *
 * Keys.  A row is (database, config name, operation, source): config names
 * live in each database's wxpay_config, so the same name in two databases
 * is two merchants.  wxpay_stat shows the current database's rows;
 * wxpay_stat_reset() forgets every database's (stats_reset is one time for
 * the whole server, like pg_stat_statements_info).
 *
 * What is counted.  One call is one attempt to talk to WeChat Pay for a
 * config: a stop or query (synchronous, each element of a batch, or by the
 * queue worker), a platform certificate download (refresh) or the live
 * request of wxpay_check_config (check).  Each call ends in exactly one
 * outcome: succeeded, rejected (WX002), unknown (WX003), not_sent (WX004)
 * or error (anything raised once a config was being used: a config
 * problem, a cancel, out of memory).  Input errors found before a config is
 * looked up, and an unknown config name, are not calls: they would let any
 * caller fill the table with names.  The callers classify; this file only
 * counts (wxpay_stat_attempt), so it depends on nothing above it.  One
 * caller lets the error being thrown speak for itself: wxpay_stat_error()
 * in a PG_CATCH block, so that a config error or a cancel raised anywhere
 * between looking up the config and the result is counted once and then
 * propagates unchanged.
 *
 * Time is that of one HTTP exchange as the transport measured it (from
 * handing the request to libcurl to its end, a failover included), never
 * signing or verification.  Each timed call adds to the total, the minimum
 * and maximum, and one bucket of a fixed histogram whose bounds grow by a
 * factor of 2^(1/4) (about 19 %) from 100 us to about an hour; p50, p95
 * and p99 are interpolated linearly inside the bucket that holds them,
 * clamped to the minimum and maximum seen, so they are within one bucket
 * width of the truth and always ordered.
 *
 * Memory.  With the library in shared_preload_libraries a fixed-size hash
 * table keyed by (config name, operation, source) lives in the main shared
 * memory segment, wxpay.stats_max entries at most.  Like pg_stat_statements
 * an entry is found under a shared LWLock and updated under its own
 * spinlock; only creating an entry takes the lock exclusively.  When the
 * table is full a new key is not added: the attempt is counted in
 * "dropped" (shown in every row) instead of evicting another config's
 * history.  Without the preload nothing is recorded and the SQL functions
 * raise 55000 with a hint, the same way pg_stat_statements does.  Config
 * names longer than STAT_NAME_LEN - 1 bytes are cut at a character
 * boundary.
 *
 * Never an error.  wxpay_stat_attempt runs on every call, also inside
 * PG_CATCH blocks before an error is re-thrown: it allocates nothing and
 * cannot fail.  It holds no secret: names, counters and times only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "fmgr.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "wxpay_signplan.h"

#define STAT_NAME_LEN		128
#define STAT_NBOUNDS		101 /* finite bucket bounds */
#define STAT_NBUCKETS		(STAT_NBOUNDS + 1)	/* the last is open */
#define STAT_FIRST_BOUND_US 100.0
#define STAT_TRANCHE		"wxpay_signplan stats"

/* GUC variables */
bool		wxpay_track_stats = true;
static int	stats_max = 1000;

typedef struct StatKey
{
	Oid			dbid;			/* config names are per database */
	char		config_name[STAT_NAME_LEN];
	int16		op;				/* WxpayStatOp */
	int16		source;			/* WxpayStatSource */
} StatKey;

typedef struct StatCounters
{
	int64		outcomes[WXPAY_STAT_NUM_OUTCOMES];
	int64		failovers;
	int64		timed;			/* calls with a time: sum of buckets */
	int64		total_us;
	int64		min_us;
	int64		max_us;
	TimestampTz last_error_at;	/* 0 = never */
	int16		last_error;		/* WxpayStatOutcome of that failure */
	int64		buckets[STAT_NBUCKETS];
} StatCounters;

typedef struct StatEntry
{
	StatKey		key;			/* hash key: first */
	slock_t		mutex;			/* protects c */
	StatCounters c;
} StatEntry;

typedef struct StatShared
{
	LWLock	   *lock;			/* the hash table's shape */
	slock_t		mutex;			/* protects what follows */
	TimestampTz stats_reset;
	int64		dropped;		/* attempts not counted: table full */
} StatShared;

/* local state */
static StatShared *Shared = NULL;
static HTAB *Table = NULL;
static int64 Bounds[STAT_NBOUNDS];	/* upper bounds in us, exclusive */
static shmem_request_hook_type PrevShmemRequestHook = NULL;
static shmem_startup_hook_type PrevShmemStartupHook = NULL;

static const char *const OpNames[WXPAY_STAT_NUM_OPS] = {
	"stop", "query", "refresh", "check"
};
static const char *const SourceNames[WXPAY_STAT_NUM_SOURCES] = {
	"session", "worker"
};
static const char *const OutcomeNames[WXPAY_STAT_NUM_OUTCOMES] = {
	"succeeded", "rejected", "unknown", "not_sent", "error"
};

static void StatShmemRequest(void);
static void StatShmemStartup(void);
static Size StatShmemSize(void);
static int	StatBucket(int64 us);
static double StatPercentile(const StatCounters *c, double q);
static void StatRequirePreload(void);

void
StatsInit(void)
{
	for (int i = 0; i < STAT_NBOUNDS; i++)
		Bounds[i] = (int64) rint(STAT_FIRST_BOUND_US * pow(2.0, i / 4.0));

	DefineCustomBoolVariable("wxpay.track_stats",
							 "Collects statistics of WeChat Pay calls for the wxpay_stat view.",
							 "Needs wxpay_signplan in shared_preload_libraries.",
							 &wxpay_track_stats,
							 true,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);

	if (!process_shared_preload_libraries_in_progress)
		return;

	DefineCustomIntVariable("wxpay.stats_max",
							"Sets how many (config, operation, source) rows the wxpay_stat view can hold.",
							"Calls of a key that finds the table full are counted only in the dropped column.",
							&stats_max,
							1000, 16, 1000000,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	PrevShmemRequestHook = shmem_request_hook;
	shmem_request_hook = StatShmemRequest;
	PrevShmemStartupHook = shmem_startup_hook;
	shmem_startup_hook = StatShmemStartup;
}

static Size
StatShmemSize(void)
{
	return add_size(MAXALIGN(sizeof(StatShared)),
					hash_estimate_size(stats_max, sizeof(StatEntry)));
}

static void
StatShmemRequest(void)
{
	if (PrevShmemRequestHook)
		PrevShmemRequestHook();
	RequestAddinShmemSpace(StatShmemSize());
	RequestNamedLWLockTranche(STAT_TRANCHE, 1);
}

static void
StatShmemStartup(void)
{
	bool		found;
	HASHCTL		info;

	if (PrevShmemStartupHook)
		PrevShmemStartupHook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	Shared = ShmemInitStruct("wxpay_signplan stats", sizeof(StatShared), &found);
	if (!found)
	{
		Shared->lock = &(GetNamedLWLockTranche(STAT_TRANCHE))->lock;
		SpinLockInit(&Shared->mutex);
		Shared->stats_reset = GetCurrentTimestamp();
		Shared->dropped = 0;
	}
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(StatKey);
	info.entrysize = sizeof(StatEntry);
#if PG_VERSION_NUM >= 190000
	Table = ShmemInitHash("wxpay_signplan stats hash", stats_max,
						  &info, HASH_ELEM | HASH_BLOBS);
#else
	Table = ShmemInitHash("wxpay_signplan stats hash", stats_max, stats_max,
						  &info, HASH_ELEM | HASH_BLOBS);
#endif
	LWLockRelease(AddinShmemInitLock);
}

/* The histogram bucket of a time: the first bound above it. */
static int
StatBucket(int64 us)
{
	int			lo = 0;
	int			hi = STAT_NBOUNDS;	/* STAT_NBOUNDS: the open bucket */

	while (lo < hi)
	{
		int			mid = (lo + hi) / 2;

		if (us < Bounds[mid])
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

/*
 * Map the SQLSTATE a failed call would raise to its outcome.  Our WX codes
 * map one to one; everything else (WX001, 57014, ...) is an error.
 */
WxpayStatOutcome
wxpay_stat_outcome(int sqlstate)
{
	if (sqlstate == ERRCODE_WXPAY_REQUEST_REJECTED)
		return WXPAY_STAT_REJECTED;
	if (sqlstate == ERRCODE_WXPAY_OUTCOME_UNKNOWN)
		return WXPAY_STAT_UNKNOWN;
	if (sqlstate == ERRCODE_WXPAY_REQUEST_NOT_SENT)
		return WXPAY_STAT_NOT_SENT;
	return WXPAY_STAT_ERROR;
}

/*
 * Count one finished call.  elapsed_us < 0 means it has no time (nothing
 * was handed to the transport, or the exchange was interrupted).  Never
 * raises an error and allocates nothing.
 */
void
wxpay_stat_attempt(const char *config_name, WxpayStatOp op,
				   WxpayStatSource source, WxpayStatOutcome outcome,
				   bool failed_over, int64 elapsed_us)
{
	StatKey		key;
	StatEntry  *e;
	int			len;
	TimestampTz now = 0;

	if (Shared == NULL || !wxpay_track_stats || config_name == NULL)
		return;
	if (outcome != WXPAY_STAT_SUCCEEDED)
		now = GetCurrentTimestamp();	/* not under the spinlock */
	Assert(op >= 0 && op < WXPAY_STAT_NUM_OPS);
	Assert(source >= 0 && source < WXPAY_STAT_NUM_SOURCES);
	Assert(outcome >= 0 && outcome < WXPAY_STAT_NUM_OUTCOMES);

	memset(&key, 0, sizeof(key));
	len = strlen(config_name);
	if (len >= STAT_NAME_LEN)
		len = pg_mbcliplen(config_name, len, STAT_NAME_LEN - 1);
	key.dbid = MyDatabaseId;
	memcpy(key.config_name, config_name, len);
	key.op = (int16) op;
	key.source = (int16) source;

	LWLockAcquire(Shared->lock, LW_SHARED);
	e = (StatEntry *) hash_search(Table, &key, HASH_FIND, NULL);
	if (e == NULL)
	{
		bool		found;

		LWLockRelease(Shared->lock);
		LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
		/* a shared hash table may outgrow its size: enforce it here */
		e = (StatEntry *) hash_search(Table, &key, HASH_FIND, NULL);
		found = e != NULL;
		if (e == NULL && hash_get_num_entries(Table) < stats_max)
			e = (StatEntry *) hash_search(Table, &key, HASH_ENTER_NULL, &found);
		if (e == NULL)
		{
			SpinLockAcquire(&Shared->mutex);
			Shared->dropped++;
			SpinLockRelease(&Shared->mutex);
			LWLockRelease(Shared->lock);
			return;
		}
		if (!found)
		{
			SpinLockInit(&e->mutex);
			memset(&e->c, 0, sizeof(StatCounters));
		}
		/* keep the lock exclusive: the entry cannot go away under us */
	}

	SpinLockAcquire(&e->mutex);
	e->c.outcomes[outcome]++;
	if (failed_over)
		e->c.failovers++;
	if (outcome != WXPAY_STAT_SUCCEEDED)
	{
		e->c.last_error_at = now;
		e->c.last_error = (int16) outcome;
	}
	if (elapsed_us >= 0)
	{
		e->c.buckets[StatBucket(elapsed_us)]++;
		if (e->c.timed == 0 || elapsed_us < e->c.min_us)
			e->c.min_us = elapsed_us;
		if (elapsed_us > e->c.max_us)
			e->c.max_us = elapsed_us;
		e->c.timed++;
		e->c.total_us += elapsed_us;
	}
	SpinLockRelease(&e->mutex);
	LWLockRelease(Shared->lock);
}

/*
 * In a PG_CATCH block of an entry point, before PG_RE_THROW: count the
 * error being thrown as one call ending in error, unless it says the config
 * does not exist (not a call; see the header).
 */
void
wxpay_stat_error(const char *config_name, WxpayStatOp op,
				 WxpayStatSource source)
{
	/* the error being thrown is still on the error stack */
	if (geterrcode() == ERRCODE_UNDEFINED_OBJECT)
		return;
	wxpay_stat_attempt(config_name, op, source, WXPAY_STAT_ERROR, false, -1);
}

/* Count a finished stop or query from its call and classified result. */
void
wxpay_stat_call(const WxpayCall *call, WxpayStatSource source, bool ok,
				const WxpayCallResult *res)
{
	wxpay_stat_attempt(call->cfg->name,
					   call->op == WXPAY_OP_STOP ? WXPAY_STAT_STOP : WXPAY_STAT_QUERY,
					   source,
					   ok ? WXPAY_STAT_SUCCEEDED : wxpay_stat_outcome(res->sqlstate),
					   call->req.failed_over, call->req.elapsed_us);
}

/*
 * The value below which a fraction q of the timed calls lie, interpolated
 * inside its bucket and clamped to [min, max].  In microseconds.
 */
static double
StatPercentile(const StatCounters *c, double q)
{
	double		rank = q * (double) c->timed;
	double		cum = 0;

	for (int i = 0; i < STAT_NBUCKETS; i++)
	{
		double		lo;
		double		hi;

		if (c->buckets[i] == 0)
			continue;
		if (cum + (double) c->buckets[i] >= rank)
		{
			lo = i == 0 ? 0.0 : (double) Bounds[i - 1];
			hi = i == STAT_NBOUNDS ? (double) c->max_us : (double) Bounds[i];
			lo = Max(lo, (double) c->min_us);
			hi = Min(hi, (double) c->max_us);
			if (hi < lo)
				hi = lo;
			return lo + (hi - lo) * ((rank - cum) / (double) c->buckets[i]);
		}
		cum += (double) c->buckets[i];
	}
	return (double) c->max_us;
}

static void
StatRequirePreload(void)
{
	if (Shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("wxpay_signplan statistics are not available"),
				 errdetail("Statistics live in shared memory, which only a preloaded library has."),
				 errhint("Add wxpay_signplan to shared_preload_libraries and restart the server.")));
}

/* result columns of wxpay_stat() (see the install script) */
#define STAT_COLS	22

PG_FUNCTION_INFO_V1(wxpay_stat);
Datum
wxpay_stat(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	StatEntry  *e;
	TimestampTz reset;
	int64		dropped;

	StatRequirePreload();
	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != STAT_COLS)
		elog(ERROR, "unexpected result type of wxpay_stat");

	SpinLockAcquire(&Shared->mutex);
	reset = Shared->stats_reset;
	dropped = Shared->dropped;
	SpinLockRelease(&Shared->mutex);

	LWLockAcquire(Shared->lock, LW_SHARED);
	hash_seq_init(&seq, Table);
	while ((e = (StatEntry *) hash_seq_search(&seq)) != NULL)
	{
		Datum		v[STAT_COLS];
		bool		n[STAT_COLS];
		StatCounters c;
		int64		calls = 0;
		int			k = 0;

		if (e->key.dbid != MyDatabaseId)
			continue;
		SpinLockAcquire(&e->mutex);
		c = e->c;
		SpinLockRelease(&e->mutex);

		memset(n, false, sizeof(n));
		for (int i = 0; i < WXPAY_STAT_NUM_OUTCOMES; i++)
			calls += c.outcomes[i];

		v[k++] = CStringGetTextDatum(e->key.config_name);
		v[k++] = CStringGetTextDatum(OpNames[e->key.op]);
		v[k++] = CStringGetTextDatum(SourceNames[e->key.source]);
		v[k++] = Int64GetDatum(calls);
		for (int i = 0; i < WXPAY_STAT_NUM_OUTCOMES; i++)
			v[k++] = Int64GetDatum(c.outcomes[i]);
		v[k++] = Int64GetDatum(c.failovers);
		v[k++] = Int64GetDatum(c.timed);
		v[k++] = Float8GetDatum(c.total_us / 1000.0);
		if (c.timed > 0)
		{
			v[k++] = Float8GetDatum(c.total_us / 1000.0 / c.timed);
			v[k++] = Float8GetDatum(c.min_us / 1000.0);
			v[k++] = Float8GetDatum(c.max_us / 1000.0);
			v[k++] = Float8GetDatum(StatPercentile(&c, 0.50) / 1000.0);
			v[k++] = Float8GetDatum(StatPercentile(&c, 0.95) / 1000.0);
			v[k++] = Float8GetDatum(StatPercentile(&c, 0.99) / 1000.0);
		}
		else
		{
			for (int i = 0; i < 6; i++)
				n[k++] = true;
		}
		if (c.last_error_at != 0)
		{
			v[k++] = TimestampTzGetDatum(c.last_error_at);
			v[k++] = CStringGetTextDatum(OutcomeNames[c.last_error]);
		}
		else
		{
			n[k++] = true;
			n[k++] = true;
		}
		v[k++] = Int64GetDatum(dropped);
		v[k++] = TimestampTzGetDatum(reset);
		Assert(k == STAT_COLS);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, v, n);
	}
	LWLockRelease(Shared->lock);
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(wxpay_stat_reset);
Datum
wxpay_stat_reset(PG_FUNCTION_ARGS)
{
	HASH_SEQ_STATUS seq;
	StatEntry  *e;
	TimestampTz now = GetCurrentTimestamp();

	StatRequirePreload();

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, Table);
	while ((e = (StatEntry *) hash_seq_search(&seq)) != NULL)
		hash_search(Table, &e->key, HASH_REMOVE, NULL);
	SpinLockAcquire(&Shared->mutex);
	Shared->stats_reset = now;
	Shared->dropped = 0;
	SpinLockRelease(&Shared->mutex);
	LWLockRelease(Shared->lock);

	PG_RETURN_TIMESTAMPTZ(now);
}
