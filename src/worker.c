/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The background processes that send queued stop requests: a launcher
 *	  and the queue worker it starts, their shared memory and wakeups.
 *
 * Processes.  With wxpay_signplan in shared_preload_libraries the postmaster
 * starts the launcher, a background worker connected to no database.  The
 * launcher starts the queue worker, a dynamic background worker connected
 * to wxpay.database_name, at startup, whenever a backend asks for it (a
 * committed enqueue), and again after a failure with growing delays
 * (1 s doubling to 5 min), so that a worker that keeps failing never becomes
 * a crash loop.  The queue worker lives as long as the extension exists in
 * its database; when it finds none it exits cleanly and waits to be asked
 * again.  DROP DATABASE or ALTER DATABASE RENAME of its database (seen by a
 * ProcessUtility hook in the backend that runs it) asks the queue worker to
 * exit first, so those commands never wait for it.
 *
 * Wakeups.  wxpay_stop_sign_plan_async() marks the transaction; at commit
 * (XACT_EVENT_COMMIT, in queue.c) the backend sets the queue worker's latch,
 * or the launcher's when no worker runs.  COMMIT PREPARED runs in any
 * session, so the ProcessUtility hook wakes the worker after every COMMIT
 * PREPARED as well.  The worker also sleeps no longer than until the next
 * due retry, or one minute, so rows inserted any other way are found too.
 *
 * One cycle of the queue worker, never holding a transaction (or a lock, or
 * a snapshot) across network I/O:
 *	  1. a short transaction: find the extension; the first time, and after
 *		 any error, turn rows left in state "sending" (a crash or error during
 *		 their attempt) back to "queued" marked outcome-unknown; pick the
 *		 config with the oldest due request that its merchant's rate limit
 *		 allows; claim up to a batch of its due requests (state "sending",
 *		 attempts + 1, committed before anything is sent); sign them.
 *	  2. no transaction: requests whose previous attempt may have reached
 *		 WeChat Pay first query the plan.  A plan that shows it was
 *		 cancelled by the merchant settles the request as succeeded, with the
 *		 queried plan as its result; others are stopped.  All requests of a
 *		 phase are in flight at once, up to wxpay.worker_concurrency.
 *	  3. a short transaction: write every outcome (succeeded, failed, or
 *		 queued again with backoff), NOTIFY wxpay_stop_request with the id of
 *		 each finished request, then wake the sessions waiting in
 *		 wxpay_wait_stop_request() through a condition variable.
 *
 * When no request is due, an idle cycle refreshes the platform certificates
 * of one config whose wxpay.certificate_refresh_interval has passed
 * (certs.c's three phases, again with no transaction during the download).
 *
 * Classification of an attempt (README "How the worker sends and retries"):
 *	  2xx verified			succeeded
 *	  4xx but 429			failed (the platform refused this stop)
 *	  429, not sent, config	queued again; the next attempt needs no query
 *	  anything else			queued again, marked outcome-unknown (error_code
 *							WX003 or the platform's 5xx code): the next
 *							attempt queries first
 * after wxpay.max_attempts attempts, a retryable outcome is final: failed.
 *
 * Errors.  Each cycle runs under a sigsetjmp handler like PostgreSQL's own
 * auxiliary processes: an error is logged, the transaction aborted, the
 * cycle's memory freed, and after a pause the worker goes on; rows it had
 * claimed are reconciled at the start of the next cycle.  An attempt left
 * behind by a crash counts as an attempt, so even a request that somehow
 * killed the worker every time ends as failed after max_attempts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "libpq/pqsignal.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "wxpay_signplan.h"

#define LAUNCHER_RESTART_SECS	10
#define WORKER_RETRY_MIN_MS		1000
#define WORKER_RETRY_MAX_MS		(300 * 1000)
#define WORKER_MAX_SLEEP_MS		(60 * 1000)
#define WORKER_ERROR_PAUSE_MS	1000
#define PURGE_INTERVAL_MS		(60 * 1000)
#define PURGE_CHUNK				10000
#define MAX_BATCH				256

/* GUC variables */
char	   *wxpay_database_name = NULL;
static int	worker_concurrency = 8;
static int	max_attempts = 10;
static int	retry_base_delay = 1000;	/* ms */
static int	retry_max_delay = 600 * 1000;	/* ms */
static int	rate_limit = 50;	/* requests per second per merchant */
static int	stop_request_retention = 0; /* s, 0 = keep */
static int	reconcile_delay = 10000;	/* ms */

/* Shared state, in the main shared memory segment. */
typedef struct WxpayShared
{
	slock_t		mutex;
	Latch	   *launcher_latch;
	Latch	   *worker_latch;
	pid_t		worker_pid;
	bool		wake_pending;	/* a backend asked for a worker */
	bool		worker_clean_exit;	/* the worker exited on purpose */
	bool		worker_connected;	/* ... after connecting to its database */
	bool		db_going;		/* its database is being dropped/renamed */
	ConditionVariable finished_cv;	/* broadcast after outcomes commit */
} WxpayShared;

/* local state */
static bool Preloaded = false;
static WxpayShared *Shared = NULL;
static shmem_startup_hook_type PrevShmemStartupHook = NULL;
static shmem_request_hook_type PrevShmemRequestHook = NULL;
static ProcessUtility_hook_type PrevProcessUtility = NULL;

/* queue worker state */
typedef struct RateWindow
{
	char		mchid[64];
	int			n;				/* entries in use */
	TimestampTz *ends;			/* when a batch ended ... */
	int		   *counts;			/* ... and how many requests it had */
	int			cap;
} RateWindow;

typedef struct QueueItem
{
	int64		id;
	char	   *plan_no;
	char	   *sub_mchid;		/* partner mode's sub-merchant, or NULL */
	text	   *stop_reason;
	int			attempts;		/* including this one */
	bool		needs_query;
	/* outcome */
	bool		done;			/* an outcome is decided */
	bool		succeeded;
	bool		retry;			/* queued again, if attempts remain */
	bool		unknown;		/* keep the outcome-unknown mark */
	Datum		result;			/* composite, when succeeded */
	long		http_status;
	char	   *error_code;
	char	   *error_message;
	char	   *request_id;
	WxpayCall	query;
	WxpayCall	stop;
} QueueItem;

typedef struct GetConfigArg
{
	const char *name;
	Oid			nspoid;
	const WxpayConfig *cfg;
} GetConfigArg;

/* when each config's platform certificates are next refreshed */
typedef struct CertSchedule
{
	char		name[NAMEDATALEN * 2];
	TimestampTz next;
} CertSchedule;

#define CERT_RETRY_MS	(5 * 60 * 1000)

static HTAB *CertSchedules = NULL;	/* by config name */

static HTAB *RateWindows = NULL;	/* by mchid */
static MemoryContext CycleCxt = NULL;	/* one cycle's memory */
static bool NeedOrphanScan = true;
static TimestampTz NextPurge = 0;

/* static prototypes */
static void WorkerShmemRequest(void);
static void WorkerShmemStartup(void);
static void WorkerProcessUtility(PlannedStmt *pstmt, const char *queryString,
								 bool readOnlyTree,
								 ProcessUtilityContext context,
								 ParamListInfo params,
								 QueryEnvironment *queryEnv,
								 DestReceiver *dest, QueryCompletion *qc);
static void WorkerDatabaseGoing(void);
static void WorkerStartQueueWorker(BackgroundWorkerHandle **handle);
static void WorkerDetach(int code, Datum arg);
static void WorkerReload(void);
static int	WorkerCycle(MemoryContext cxt, long *sleep_ms);
static void WorkerTxnBegin(MemoryContext cxt, const char *activity);
static void WorkerTxnEnd(MemoryContext cxt);
static int	WorkerExec(const char *sql, int nargs, Oid *types, Datum *values,
					   bool read_only);
static Oid	WorkerExtensionSchema(void);
static void WorkerReconcileOrphans(const char *q);
static void WorkerPurge(const char *q);
static int	WorkerClaim(const char *q, Oid nspoid, QueueItem **items_out,
						const WxpayConfig **cfg_out, TupleDesc *plan_desc,
						long *sleep_ms);
static void WorkerSend(QueueItem *items, int n, const WxpayConfig *cfg,
					   TupleDesc plan_desc);
static void WorkerRecord(const char *q, QueueItem *items, int n, Oid plan_type);
static void WorkerFail(QueueItem *it, WxpayCallResult *res);
static long WorkerBackoff(int attempts);
static bool WorkerRefreshCertificates(MemoryContext cxt, long *sleep_ms);
static CertSchedule *CertScheduleFind(const char *name);
static void WorkerCertPrepare(void *arg);
static bool WorkerTry(void (*fn) (void *), void *arg, WxpayCallResult *failure);
static void WorkerGetConfig(void *arg);
static void WorkerSign(void *arg);
static void *NamedEntry(HTAB **tab, const char *tabname, Size entrysize,
						Size keysize, const char *key, bool *found);
static RateWindow *RateFind(const char *mchid);
static int	RateAvailable(RateWindow *w, TimestampTz now, long *wait_ms);
static void RateRecord(RateWindow *w, TimestampTz end, int count);

PGDLLEXPORT void wxpay_launcher_main(Datum arg);
PGDLLEXPORT void wxpay_queue_worker_main(Datum arg);

/* ----------------------------------------------------------------
 *		Setup, in the postmaster and every backend
 * ----------------------------------------------------------------
 */

void
WorkerInit(void)
{
	BackgroundWorker bgw;

	DefineCustomIntVariable("wxpay.worker_concurrency",
							"Sets how many requests the background worker keeps in flight at once.",
							NULL,
							&worker_concurrency,
							8, 1, 64,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.max_attempts",
							"Sets how many times the background worker tries one stop request.",
							"A request whose attempts all end in a retryable failure is marked failed.",
							&max_attempts,
							10, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.retry_base_delay",
							"Sets the delay before the second attempt of a stop request.",
							"Each further attempt waits twice as long, up to wxpay.retry_max_delay, with random jitter.",
							&retry_base_delay,
							1000, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.retry_max_delay",
							"Sets the longest delay between two attempts of a stop request.",
							NULL,
							&retry_max_delay,
							600 * 1000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.reconcile_delay",
							"Sets how long the background worker waits before settling an attempt whose outcome is unknown.",
							"The request may still be in progress at WeChat Pay; the plan is queried only after this delay.",
							&reconcile_delay,
							10000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.rate_limit",
							"Sets the most requests per second the background worker sends for one merchant.",
							"Zero means no limit.",
							&rate_limit,
							50, 0, 10000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.stop_request_retention",
							"Sets how long finished stop requests are kept before the background worker deletes them.",
							"Zero keeps them until wxpay_purge_stop_requests() deletes them.",
							&stop_request_retention,
							0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	/* the rest exists only when preloaded (PGC_POSTMASTER needs it, too) */
	if (!process_shared_preload_libraries_in_progress || IsBinaryUpgrade)
		return;
	Preloaded = true;

	DefineCustomStringVariable("wxpay.database_name",
							   "Sets the database whose stop request queue the background worker serves.",
							   "wxpay_stop_sign_plan_async() works only in this database.",
							   &wxpay_database_name,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);


	PrevShmemRequestHook = shmem_request_hook;
	shmem_request_hook = WorkerShmemRequest;
	PrevShmemStartupHook = shmem_startup_hook;
	shmem_startup_hook = WorkerShmemStartup;
	PrevProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = WorkerProcessUtility;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = LAUNCHER_RESTART_SECS;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "wxpay_signplan");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "wxpay_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "wxpay_signplan launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "wxpay_signplan launcher");
	RegisterBackgroundWorker(&bgw);
}

bool
wxpay_worker_preloaded(void)
{
	return Preloaded && Shared != NULL;
}

static void
WorkerShmemRequest(void)
{
	if (PrevShmemRequestHook)
		PrevShmemRequestHook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WxpayShared)));
}

static void
WorkerShmemStartup(void)
{
	bool		found;

	if (PrevShmemStartupHook)
		PrevShmemStartupHook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	Shared = ShmemInitStruct("wxpay_signplan", sizeof(WxpayShared), &found);
	if (!found)
	{
		memset(Shared, 0, sizeof(WxpayShared));
		SpinLockInit(&Shared->mutex);
		ConditionVariableInit(&Shared->finished_cv);
	}
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Ask for the queue to be served now: set the worker's latch, or the
 * launcher's so that it starts one.  Called after commit: may not fail.
 */
void
wxpay_worker_wake(void)
{
	Latch	   *worker;
	Latch	   *launcher;

	if (Shared == NULL)
		return;
	SpinLockAcquire(&Shared->mutex);
	Shared->wake_pending = true;
	worker = Shared->worker_latch;
	launcher = Shared->launcher_latch;
	SpinLockRelease(&Shared->mutex);

	if (worker)
		SetLatch(worker);
	else if (launcher)
		SetLatch(launcher);
}

/*
 * Waiting for outcomes (wxpay_wait_stop_request): prepare, check the row,
 * then sleep until the worker has committed outcomes or timeout_ms passed.
 */
void
wxpay_worker_prepare_wait(void)
{
	ConditionVariablePrepareToSleep(&Shared->finished_cv);
}

void
wxpay_worker_wait_finished(long timeout_ms)
{
	(void) ConditionVariableTimedSleep(&Shared->finished_cv, timeout_ms,
									   PG_WAIT_EXTENSION);
}

void
wxpay_worker_cancel_wait(void)
{
	ConditionVariableCancelSleep();
}

/*
 * COMMIT PREPARED may make queued requests visible; DROP DATABASE and
 * ALTER DATABASE RENAME of the worker's database must not wait for it.
 */
static void
WorkerProcessUtility(PlannedStmt *pstmt, const char *queryString,
					 bool readOnlyTree, ProcessUtilityContext context,
					 ParamListInfo params, QueryEnvironment *queryEnv,
					 DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *node = pstmt->utilityStmt;
	bool		commit_prepared = false;

	if (IsA(node, TransactionStmt))
		commit_prepared =
			((TransactionStmt *) node)->kind == TRANS_STMT_COMMIT_PREPARED;
	else if (IsA(node, DropdbStmt))
	{
		if (wxpay_database_name &&
			strcmp(((DropdbStmt *) node)->dbname, wxpay_database_name) == 0)
			WorkerDatabaseGoing();
	}
	else if (IsA(node, RenameStmt))
	{
		RenameStmt *rs = (RenameStmt *) node;

		if (rs->renameType == OBJECT_DATABASE && wxpay_database_name &&
			rs->subname && strcmp(rs->subname, wxpay_database_name) == 0)
			WorkerDatabaseGoing();
	}

	if (PrevProcessUtility)
		PrevProcessUtility(pstmt, queryString, readOnlyTree, context, params,
						   queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);

	if (commit_prepared)
		wxpay_worker_wake();
}

/* Ask the queue worker to leave its database, which is being dropped. */
static void
WorkerDatabaseGoing(void)
{
	pid_t		pid;

	if (Shared == NULL)
		return;
	SpinLockAcquire(&Shared->mutex);
	Shared->db_going = true;
	pid = Shared->worker_pid;
	SpinLockRelease(&Shared->mutex);
	if (pid != 0)
		kill(pid, SIGTERM);
}

/* ----------------------------------------------------------------
 *		The launcher
 * ----------------------------------------------------------------
 */

void
wxpay_launcher_main(Datum arg)
{
	BackgroundWorkerHandle *handle = NULL;
	TimestampTz next_start = GetCurrentTimestamp();	/* serve at startup */
	long		delay_ms = WORKER_RETRY_MIN_MS;

	(void) arg;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: this only makes the launcher visible in pg_stat_activity */
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	pgstat_report_appname("wxpay_signplan launcher");

	SpinLockAcquire(&Shared->mutex);
	Shared->launcher_latch = MyLatch;
	SpinLockRelease(&Shared->mutex);

	for (;;)
	{
		long		timeout = -1;
		bool		wake;

		CHECK_FOR_INTERRUPTS();
		WorkerReload();

		/* did the worker exit? */
		if (handle != NULL)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED)
			{
				bool		clean;
				bool		connected;
				bool		going;

				SpinLockAcquire(&Shared->mutex);
				clean = Shared->worker_clean_exit;
				connected = Shared->worker_connected;
				going = Shared->db_going;
				Shared->worker_clean_exit = false;
				Shared->worker_connected = false;
				Shared->db_going = false;
				SpinLockRelease(&Shared->mutex);

				pfree(handle);
				handle = NULL;
				if (clean)
				{
					/* nothing to serve: wait to be asked */
					next_start = DT_NOEND;
					delay_ms = WORKER_RETRY_MIN_MS;
				}
				else
				{
					/* failed, killed, or its database went away: back off */
					if (connected && !going)
						delay_ms = WORKER_RETRY_MIN_MS;
					else
						delay_ms = Min(delay_ms * 2, WORKER_RETRY_MAX_MS);
					if (going)
						delay_ms = Max(delay_ms, 10 * 1000);
					next_start = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
															 delay_ms);
				}
			}
		}

		SpinLockAcquire(&Shared->mutex);
		wake = Shared->wake_pending;
		SpinLockRelease(&Shared->mutex);

		if (handle == NULL &&
			((wake && next_start == DT_NOEND) ||
			 GetCurrentTimestamp() >= next_start))
		{
			SpinLockAcquire(&Shared->mutex);
			Shared->wake_pending = false;
			SpinLockRelease(&Shared->mutex);
			WorkerStartQueueWorker(&handle);
			if (handle != NULL)
				next_start = DT_NOEND;
			else
			{
				/* no free worker slot: try again later */
				delay_ms = Min(delay_ms * 2, WORKER_RETRY_MAX_MS);
				next_start = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														 delay_ms);
			}
		}

		if (handle == NULL && next_start != DT_NOEND)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), next_start, &secs, &usecs);
			timeout = secs * 1000 + usecs / 1000 + 1;
		}

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH |
						 (timeout >= 0 ? WL_TIMEOUT : 0),
						 timeout, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
}

static void
WorkerStartQueueWorker(BackgroundWorkerHandle **handle)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "wxpay_signplan");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "wxpay_queue_worker_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "wxpay_signplan worker");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "wxpay_signplan worker");
	bgw.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&bgw, handle))
	{
		ereport(LOG,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the wxpay_signplan worker"),
				 errhint("Raise max_worker_processes.")));
		*handle = NULL;
	}
}

/* ----------------------------------------------------------------
 *		The queue worker
 * ----------------------------------------------------------------
 */

static void
WorkerDetach(int code, Datum arg)
{
	(void) code;
	(void) arg;
	SpinLockAcquire(&Shared->mutex);
	Shared->worker_latch = NULL;
	Shared->worker_pid = 0;
	SpinLockRelease(&Shared->mutex);
}

static void
WorkerReload(void)
{
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
}

void
wxpay_queue_worker_main(Datum arg)
{
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext cycle_cxt;

	(void) arg;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(wxpay_database_name, NULL, 0);
	pgstat_report_appname("wxpay_signplan worker");

	SpinLockAcquire(&Shared->mutex);
	Shared->worker_connected = true;
	Shared->worker_latch = MyLatch;
	Shared->worker_pid = MyProcPid;
	SpinLockRelease(&Shared->mutex);
	before_shmem_exit(WorkerDetach, (Datum) 0);

	cycle_cxt = AllocSetContextCreate(TopMemoryContext, "wxpay worker cycle",
									  ALLOCSET_DEFAULT_SIZES);
	CycleCxt = cycle_cxt;

	/* an error in a cycle is logged and the worker goes on */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		error_context_stack = NULL;
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortOutOfAnyTransaction();
		MemoryContextSwitchTo(TopMemoryContext);
		FlushErrorState();
		MemoryContextReset(cycle_cxt);
		NeedOrphanScan = true;
		RESUME_INTERRUPTS();

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch, WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 WORKER_ERROR_PAUSE_MS, PG_WAIT_EXTENSION);
	}
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		long		sleep_ms = WORKER_MAX_SLEEP_MS;
		int			handled;

		CHECK_FOR_INTERRUPTS();
		WorkerReload();
		ResetLatch(MyLatch);

		MemoryContextSwitchTo(cycle_cxt);
		handled = WorkerCycle(cycle_cxt, &sleep_ms);
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(cycle_cxt);

		if (handled < 0)
		{
			/* the extension is not installed here: wait to be asked */
			SpinLockAcquire(&Shared->mutex);
			Shared->worker_clean_exit = true;
			SpinLockRelease(&Shared->mutex);
			proc_exit(0);
		}
		if (handled > 0)
			continue;

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(sleep_ms, 1), PG_WAIT_EXTENSION);
	}
}

/*
 * SPI_execute_with_args, then back to the cycle's memory: SPI leaves its
 * own procedure context current, which SPI_finish frees with everything
 * allocated in it.
 */
static int
WorkerExec(const char *sql, int nargs, Oid *types, Datum *values,
		   bool read_only)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, NULL,
											read_only, 0);

	MemoryContextSwitchTo(CycleCxt);
	return ret;
}

/* The extension's schema, or InvalidOid; in a transaction with SPI. */
static Oid
WorkerExtensionSchema(void)
{
	bool		isnull;
	Datum		d;

	if (WorkerExec("SELECT extnamespace FROM pg_catalog.pg_extension"
				   " WHERE extname = 'wxpay_signplan'", 0, NULL, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the wxpay_signplan extension");
	if (SPI_processed == 0)
		return InvalidOid;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return DatumGetObjectId(d);
}

/*
 * A short transaction with SPI and a snapshot; whatever the cycle allocates
 * goes into cxt, which outlives the transaction.
 */
static void
WorkerTxnBegin(MemoryContext cxt, const char *activity)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	wxpay_spi_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
	MemoryContextSwitchTo(cxt);
}

static void
WorkerTxnEnd(MemoryContext cxt)
{
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
}

/*
 * One cycle.  Returns the number of requests handled, 0 when nothing was due
 * (*sleep_ms then says how long to sleep), or -1 when the extension is not
 * installed in this database.
 */
static int
WorkerCycle(MemoryContext cxt, long *sleep_ms)
{
	Oid			nspoid;
	char	   *q;
	QueueItem  *items = NULL;
	const WxpayConfig *cfg = NULL;
	TupleDesc	plan_desc = NULL;
	int			n;

	WorkerTxnBegin(cxt, "looking for due stop requests");
	nspoid = WorkerExtensionSchema();
	if (!OidIsValid(nspoid))
	{
		WorkerTxnEnd(cxt);
		return -1;
	}
	q = psprintf("%s.wxpay_stop_request", wxpay_schema_quoted(nspoid));

	if (NeedOrphanScan)
	{
		WorkerReconcileOrphans(q);
		NeedOrphanScan = false;
	}
	if (stop_request_retention > 0 && GetCurrentTimestamp() >= NextPurge)
	{
		WorkerPurge(q);
		NextPurge = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												PURGE_INTERVAL_MS);
	}

	n = WorkerClaim(q, nspoid, &items, &cfg, &plan_desc, sleep_ms);
	WorkerTxnEnd(cxt);
	if (n <= 0)
	{
		/* idle: time for certificates? */
		return WorkerRefreshCertificates(cxt, sleep_ms) ? 1 : 0;
	}

	/*
	 * No transaction from here to the outcomes: cfg stays valid, because
	 * nothing looks up a config before the next cycle.
	 */
	if (cfg != NULL)
	{
		pgstat_report_activity(STATE_RUNNING,
							   psprintf("sending %d stop request%s", n, n == 1 ? "" : "s"));
		WorkerSend(items, n, cfg, plan_desc);
	}

	WorkerTxnBegin(cxt, "recording outcomes");
	WorkerRecord(q, items, n, plan_desc ? plan_desc->tdtypeid : InvalidOid);
	WorkerTxnEnd(cxt);
	pgstat_report_stat(false);

	ConditionVariableBroadcast(&Shared->finished_cv);
	return n;
}

/*
 * Rows left in "sending" were being attempted when the worker crashed or
 * failed: their outcome is unknown, so the next attempt queries first.
 */
static void
WorkerReconcileOrphans(const char *q)
{
	char	   *sql;
	int			ret;

	sql = psprintf("WITH r AS ("
				   " UPDATE %s SET"
				   "  state = CASE WHEN attempts >= $1 THEN 'failed' ELSE 'queued' END,"
				   "  finished_at = CASE WHEN attempts >= $1 THEN pg_catalog.now() END,"
				   "  next_attempt_at = pg_catalog.now() + pg_catalog.make_interval(secs => $2),"
				   "  http_status = NULL, request_id = NULL,"
				   "  error_code = 'WX003',"
				   "  error_message = 'The worker stopped while this request was in flight, so the outcome of that attempt is unknown.'"
				   " WHERE state = 'sending' RETURNING id, state)"
				   " SELECT pg_catalog.pg_notify('wxpay_stop_request', id::text)"
				   " FROM r WHERE state = 'failed'", q);
	ret = WorkerExec(sql, 2, (Oid[]) {INT4OID, FLOAT8OID},
					 (Datum[]) {Int32GetDatum(max_attempts),
					 Float8GetDatum(reconcile_delay / 1000.0)}, false);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not reconcile stop requests: SPI error %d", ret);
}

static void
WorkerPurge(const char *q)
{
	char	   *sql;

	sql = psprintf("DELETE FROM %s WHERE id IN (SELECT id FROM %s"
				   " WHERE state IN ('succeeded', 'failed')"
				   " AND finished_at < pg_catalog.now() - pg_catalog.make_interval(secs => $1)"
				   " LIMIT %d)", q, q, PURGE_CHUNK);
	if (WorkerExec(sql, 1, (Oid[]) {FLOAT8OID},
				   (Datum[]) {Float8GetDatum((double) stop_request_retention)},
				   false) != SPI_OK_DELETE)
		elog(ERROR, "could not purge finished stop requests");
}

/*
 * Pick a config and claim its due requests; sign them.  Returns how many
 * were claimed.  When the config cannot be used, the claimed items come back
 * already decided (done) with *cfg_out NULL.
 */
static int
WorkerClaim(const char *q, Oid nspoid, QueueItem **items_out,
			const WxpayConfig **cfg_out, TupleDesc *plan_desc, long *sleep_ms)
{
	char	   *sql;
	char	  **skipped = palloc(sizeof(char *));
	int			nskipped = 0;
	const WxpayConfig *cfg = NULL;
	char	   *chosen = NULL;
	int			budget = 0;
	RateWindow *window;
	WxpayCallResult cfg_failure;
	bool		cfg_failed = false;
	int64	   *ids;
	QueueItem  *items;
	int			n;
	int			limit;

	/*
	 * The config of the oldest due request whose merchant's rate limit lets
	 * it through: one index probe per config tried, however long the queue.
	 */
	sql = psprintf("SELECT config_name FROM %s"
				   " WHERE state = 'queued' AND next_attempt_at <= pg_catalog.now()"
				   " AND config_name <> ALL ($1)"
				   " ORDER BY next_attempt_at, id LIMIT 1", q);
	for (int tries = 0; tries < 32 && chosen == NULL; tries++)
	{
		GetConfigArg ga;
		long		wait_ms = 0;
		int			avail;
		char	   *name;
		Datum	   *d = palloc(sizeof(Datum) * (nskipped + 1));

		for (int i = 0; i < nskipped; i++)
			d[i] = CStringGetTextDatum(skipped[i]);
		if (WorkerExec(sql, 1, (Oid[]) {TEXTARRAYOID},
					   (Datum[]) {PointerGetDatum(construct_array(d, nskipped, TEXTOID, -1, false, TYPALIGN_INT))},
					   true) != SPI_OK_SELECT)
			elog(ERROR, "could not scan the stop request queue");
		if (SPI_processed == 0)
			break;
		name = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		skipped = repalloc(skipped, sizeof(char *) * (nskipped + 1));
		skipped[nskipped++] = name;

		ga.name = name;
		ga.nspoid = nspoid;
		ga.cfg = NULL;
		if (!WorkerTry(WorkerGetConfig, &ga, &cfg_failure))
		{
			/* a broken or missing config: its requests wait, unsent */
			cfg_failed = true;
			chosen = name;
			budget = MAX_BATCH;
			break;
		}
		cfg = ga.cfg;
		window = RateFind(cfg->mchid);
		avail = RateAvailable(window, GetCurrentTimestamp(), &wait_ms);
		if (avail <= 0)
		{
			*sleep_ms = Min(*sleep_ms, wait_ms);
			cfg = NULL;
			continue;
		}
		chosen = name;
		budget = avail;
	}
	if (chosen == NULL && nskipped == 0)
	{
		bool		isnull;
		Datum		d;

		/* nothing due: sleep until the next retry is */
		sql = psprintf("SELECT pg_catalog.min(next_attempt_at) FROM %s WHERE state = 'queued'", q);
		if (WorkerExec(sql, 0, NULL, NULL, true) != SPI_OK_SELECT)
			elog(ERROR, "could not scan the stop request queue");
		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), DatumGetTimestampTz(d),
								&secs, &usecs);
			*sleep_ms = Min(*sleep_ms, secs * 1000 + usecs / 1000 + 1);
		}
		return 0;
	}
	if (chosen == NULL)
		return 0;

	limit = cfg_failed ? MAX_BATCH : Min(MAX_BATCH, worker_concurrency * 4);
	limit = Min(limit, budget);

	/*
	 * Due requests of that config, one per plan: a plan with a request in
	 * flight, or two due requests, never has two stops on the wire at once.
	 * Plans of different sub-merchants (partner mode) with one number count
	 * as one here: they only wait for each other.
	 */
	sql = psprintf("SELECT id, merchant_sign_plan_no, stop_reason, attempts,"
				   " attempts > 0 AND error_code IS DISTINCT FROM 'WX004'"
				   "  AND error_code IS DISTINCT FROM 'WX001'"
				   "  AND error_code IS DISTINCT FROM '42704'"
				   "  AND http_status IS DISTINCT FROM 429 AS needs_query,"
				   " sub_mchid"
				   " FROM %s r"
				   " WHERE state = 'queued' AND config_name = $1"
				   " AND next_attempt_at <= pg_catalog.now()"
				   " AND NOT EXISTS (SELECT 1 FROM %s s WHERE s.state = 'sending'"
				   "  AND s.config_name = r.config_name"
				   "  AND s.merchant_sign_plan_no = r.merchant_sign_plan_no)"
				   " ORDER BY next_attempt_at, id LIMIT %d"
				   " FOR UPDATE SKIP LOCKED", q, q, limit * 2);
	if (WorkerExec(sql, 1, (Oid[]) {TEXTOID},
				   (Datum[]) {CStringGetTextDatum(chosen)}, false) != SPI_OK_SELECT)
		elog(ERROR, "could not claim stop requests");

	items = palloc0(sizeof(QueueItem) * SPI_processed);
	ids = palloc(sizeof(int64) * SPI_processed);
	n = 0;
	for (uint64 i = 0; i < SPI_processed && budget > 0 && n < limit; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		QueueItem  *it = &items[n];
		bool		dup = false;

		it->plan_no = SPI_getvalue(tup, desc, 2);
		for (int j = 0; j < n; j++)
			if (strcmp(items[j].plan_no, it->plan_no) == 0)
				dup = true;
		if (dup)
			continue;
		it->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		it->stop_reason = DatumGetTextPCopy(SPI_getbinval(tup, desc, 3, &isnull));
		it->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull)) + 1;
		it->needs_query = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		it->sub_mchid = SPI_getvalue(tup, desc, 6);	/* NULL when NULL */
		if (!cfg_failed)
		{
			int			cost = it->needs_query ? 2 : 1;

			if (cost > budget && n > 0)
				break;
			budget -= cost;
		}
		ids[n] = it->id;
		n++;
	}
	if (n == 0)
		return 0;

	/* claimed: committed as "sending" before anything is sent */
	{
		Datum	   *d = palloc(sizeof(Datum) * n);
		ArrayType  *arr;

		for (int i = 0; i < n; i++)
			d[i] = Int64GetDatum(ids[i]);
		arr = construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
		sql = psprintf("UPDATE %s SET state = 'sending', attempts = attempts + 1"
					   " WHERE id = ANY ($1)", q);
		if (WorkerExec(sql, 1, (Oid[]) {INT8ARRAYOID},
					   (Datum[]) {PointerGetDatum(arr)}, false) != SPI_OK_UPDATE)
			elog(ERROR, "could not claim stop requests");
	}

	if (cfg_failed)
	{
		for (int i = 0; i < n; i++)
			WorkerFail(&items[i], &cfg_failure);
		*items_out = items;
		*cfg_out = NULL;
		return n;
	}

	/* the answer's row type, kept for after this transaction */
	{
		Oid			typid = GetSysCacheOid2(TYPENAMENSP, Anum_pg_type_oid,
											CStringGetDatum("wxpay_sign_plan"),
											ObjectIdGetDatum(nspoid));

		if (!OidIsValid(typid))
			elog(ERROR, "type wxpay_sign_plan is missing");
		*plan_desc = lookup_rowtype_tupdesc_copy(typid, -1);
	}

	/* sign: input rows that fail the checks are final failures */
	for (int i = 0; i < n; i++)
	{
		QueueItem  *it = &items[i];
		WxpayCallResult res;

		it->stop.cfg = cfg;
		it->query.cfg = cfg;
		if (!WorkerTry(WorkerSign, it, &res))
		{
			WorkerFail(it, &res);
			/* bad input never becomes good: no retry */
			if (ERRCODE_TO_CATEGORY(res.sqlstate) == ERRCODE_DATA_EXCEPTION)
				it->retry = false;
		}
	}

	*items_out = items;
	*cfg_out = cfg;
	return n;
}

/*
 * Run fn(arg) in an internal subtransaction.  On error, roll it back and
 * describe the error in *failure (as a call result) instead of raising.
 */
static bool
WorkerTry(void (*fn) (void *), void *arg, WxpayCallResult *failure)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();

		memset(failure, 0, sizeof(WxpayCallResult));
		failure->sqlstate = edata->sqlerrcode;
		failure->message = edata->message;
		failure->detail = edata->detail;
		failure->hint = edata->hint;
		ok = false;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return ok;
}

static void
WorkerGetConfig(void *arg)
{
	GetConfigArg *ga = (GetConfigArg *) arg;

	ga->cfg = wxpay_config_get(ga->name, ga->nspoid);
}

/* Check one claimed row's input and sign its requests. */
static void
WorkerSign(void *arg)
{
	QueueItem  *it = (QueueItem *) arg;

	wxpay_check_plan_no_arg(it->plan_no);
	it->stop.op = WXPAY_OP_STOP;
	it->stop.plan_no = it->plan_no;
	it->stop.sub_mchid = it->sub_mchid;
	it->stop.stop_reason = wxpay_check_stop_reason_arg(it->stop_reason);
	wxpay_call_prepare(&it->stop);
	if (it->needs_query)
	{
		it->query.op = WXPAY_OP_QUERY;
		it->query.plan_no = it->plan_no;
		it->query.sub_mchid = it->sub_mchid;	/* the partner query */
		wxpay_call_prepare(&it->query);
	}
}

/* Decide item it from a failed call (or a failure described like one). */
static void
WorkerFail(QueueItem *it, WxpayCallResult *res)
{
	int			s = res->sqlstate;

	it->done = true;
	it->succeeded = false;
	it->http_status = res->http_status;
	it->request_id = res->request_id;
	it->error_code = res->error_code ? res->error_code : pstrdup(unpack_sql_state(s));
	it->error_message = wxpay_report_text(res);

	if (s == ERRCODE_WXPAY_REQUEST_REJECTED)
		it->retry = (res->http_status == 429);
	else if (s == ERRCODE_WXPAY_OUTCOME_UNKNOWN)
	{
		it->retry = true;
		it->unknown = true;
	}
	else
		it->retry = (s == ERRCODE_WXPAY_REQUEST_NOT_SENT ||
					 s == ERRCODE_WXPAY_CONFIG_ERROR ||
					 s == ERRCODE_UNDEFINED_OBJECT);

	/* outcome unknown and no platform code: keep our mark for next time */
	if (it->unknown && res->error_code == NULL)
		it->error_code = pstrdup("WX003");
}

/* Network phases: reconciling queries, then stops; no transaction open. */
static void
WorkerSend(QueueItem *items, int n, const WxpayConfig *cfg, TupleDesc plan_desc)
{
	WxpayHttpRequest **reqs = palloc(sizeof(WxpayHttpRequest *) * n);
	int			nreq = 0;
	int			cancel_attno = 0;
	RateWindow *window;
	int			sent = 0;

	for (int a = 0; a < plan_desc->natts; a++)
		if (strcmp(NameStr(TupleDescAttr(plan_desc, a)->attname), "cancel_sign_type") == 0)
			cancel_attno = a + 1;

	/* 1: where an earlier attempt may have stopped the plan, look first */
	for (int i = 0; i < n; i++)
		if (!items[i].done && items[i].needs_query)
			reqs[nreq++] = &items[i].query.req;
	if (nreq > 0)
	{
		wxpay_http_perform(reqs, nreq, worker_concurrency);
		sent += nreq;
	}
	for (int i = 0; i < n; i++)
	{
		QueueItem  *it = &items[i];
		WxpayCallResult res;
		bool		isnull = true;
		Datum		d = (Datum) 0;

		if (it->done || !it->needs_query)
			continue;
		if (!wxpay_call_finish(&it->query, plan_desc, &res))
		{
			/* 404: the plan is unknown; let the stop say so */
			if (!(res.sqlstate == ERRCODE_WXPAY_REQUEST_REJECTED &&
				  res.http_status == 404))
			{
				WorkerFail(it, &res);
				it->retry = true;	/* the query changes nothing: retry */
				it->unknown = true;
				it->error_code = pstrdup("WX003");
				it->error_message = psprintf("The outcome of an earlier attempt is unknown and the query to settle it failed: %s",
											 it->error_message);
			}
			continue;
		}
		if (cancel_attno > 0)
			d = heap_getattr(res.tuple, cancel_attno, plan_desc, &isnull);
		if (!isnull && strcmp(TextDatumGetCString(d), "MERCHANT") == 0)
		{
			/* an earlier attempt stopped it */
			it->done = true;
			it->succeeded = true;
			it->result = heap_copy_tuple_as_datum(res.tuple, plan_desc);
			it->http_status = res.http_status;
			it->request_id = res.request_id;
		}
	}

	/* 2: the stops */
	nreq = 0;
	for (int i = 0; i < n; i++)
		if (!items[i].done)
			reqs[nreq++] = &items[i].stop.req;
	if (nreq > 0)
	{
		wxpay_http_perform(reqs, nreq, worker_concurrency);
		sent += nreq;
	}
	for (int i = 0; i < n; i++)
	{
		QueueItem  *it = &items[i];
		WxpayCallResult res;

		if (it->done)
			continue;
		if (wxpay_call_finish(&it->stop, plan_desc, &res))
		{
			it->done = true;
			it->succeeded = true;
			it->result = heap_copy_tuple_as_datum(res.tuple, plan_desc);
			it->http_status = res.http_status;
			it->request_id = res.request_id;
		}
		else
			WorkerFail(it, &res);
	}

	window = RateFind(cfg->mchid);
	RateRecord(window, GetCurrentTimestamp(), sent);
}

/* Write every outcome; notify for the finished ones. */
static void
WorkerRecord(const char *q, QueueItem *items, int n, Oid plan_type)
{
	char	   *ok_sql;
	char	   *fail_sql;
	SPIPlanPtr	ok_plan;
	SPIPlanPtr	fail_plan;

	ok_sql = psprintf("WITH r AS (UPDATE %s SET state = 'succeeded',"
					  " finished_at = pg_catalog.now(), http_status = $2,"
					  " request_id = $3, result = $4, error_code = NULL,"
					  " error_message = NULL WHERE id = $1 AND state = 'sending'"
					  " RETURNING id)"
					  " SELECT pg_catalog.pg_notify('wxpay_stop_request', id::text) FROM r",
					  q);
	fail_sql = psprintf("WITH r AS (UPDATE %s SET"
						" state = CASE WHEN $6 THEN 'queued' ELSE 'failed' END,"
						" finished_at = CASE WHEN $6 THEN NULL ELSE pg_catalog.now() END,"
						" next_attempt_at = pg_catalog.now() + pg_catalog.make_interval(secs => $7),"
						" http_status = $2, request_id = $3, error_code = $4,"
						" error_message = $5 WHERE id = $1 AND state = 'sending'"
						" RETURNING id, state)"
						" SELECT pg_catalog.pg_notify('wxpay_stop_request', id::text)"
						" FROM r WHERE state = 'failed'", q);

	if (OidIsValid(plan_type))
	{
		ok_plan = SPI_prepare(ok_sql, 4, (Oid[]) {INT8OID, INT4OID, TEXTOID, plan_type});
		if (ok_plan == NULL)
			elog(ERROR, "could not prepare: %s", SPI_result_code_string(SPI_result));
	}
	else
		ok_plan = NULL;
	fail_plan = SPI_prepare(fail_sql, 7, (Oid[]) {INT8OID, INT4OID, TEXTOID, TEXTOID,
		TEXTOID, BOOLOID, FLOAT8OID});
	if (fail_plan == NULL)
		elog(ERROR, "could not prepare: %s", SPI_result_code_string(SPI_result));

	for (int i = 0; i < n; i++)
	{
		QueueItem  *it = &items[i];
		Datum		v[7];
		char		nulls[7];

		memset(nulls, ' ', sizeof(nulls));
		v[0] = Int64GetDatum(it->id);
		v[1] = Int32GetDatum((int32) it->http_status);
		if (it->http_status == 0)
			nulls[1] = 'n';
		if (it->request_id)
			v[2] = CStringGetTextDatum(it->request_id);
		else
			nulls[2] = 'n';

		if (it->succeeded && ok_plan)
		{
			v[3] = it->result;
			if (SPI_execute_plan(ok_plan, v, nulls, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not record a stop request's outcome");
			continue;
		}

		{
			bool		retry = it->retry && it->attempts < max_attempts;
			long		delay_ms;

			if (it->error_code)
				v[3] = CStringGetTextDatum(it->error_code);
			else
				nulls[3] = 'n';
			if (it->error_message)
				v[4] = CStringGetTextDatum(it->error_message);
			else
				nulls[4] = 'n';
			v[5] = BoolGetDatum(retry);
			delay_ms = retry ? WorkerBackoff(it->attempts) : 0;
			/* let an attempt that may still be in progress finish first */
			if (retry && it->unknown)
				delay_ms = Max(delay_ms, reconcile_delay);
			v[6] = Float8GetDatum(delay_ms / 1000.0);
			if (SPI_execute_plan(fail_plan, v, nulls, false, 0) != SPI_OK_SELECT)
				elog(ERROR, "could not record a stop request's outcome");
		}
	}
}

/*
 * Delay before the attempt after attempt number attempts: exponential from
 * wxpay.retry_base_delay, capped, with "equal jitter" (half fixed, half
 * random) so that a burst of failures does not retry in lockstep.
 */
static long
WorkerBackoff(int attempts)
{
	double		d = retry_base_delay;

	for (int i = 1; i < attempts && d < retry_max_delay; i++)
		d *= 2;
	d = Min(d, (double) retry_max_delay);
	return (long) (d / 2 + pg_prng_double(&pg_global_prng_state) * d / 2);
}

/* ----------------------------------------------------------------
 *		Platform certificates: each config with an apiv3_key is refreshed
 *		every wxpay.certificate_refresh_interval, one config per idle cycle,
 *		in certs.c's three phases (no transaction across the download).  A
 *		failure is logged and retried after five minutes (or the interval,
 *		if shorter); the certificates already held stay in use.
 * ----------------------------------------------------------------
 */

static CertSchedule *
CertScheduleFind(const char *name)
{
	bool		found;
	CertSchedule *cs = NamedEntry(&CertSchedules, "wxpay certificate schedules",
								  sizeof(CertSchedule), sizeof(cs->name),
								  name, &found);

	if (!found)
		cs->next = 0;			/* due at once */
	return cs;
}

typedef struct CertPrepareArg
{
	WxpayCertRefresh *r;
	const char *name;
	Oid			nspoid;
	MemoryContext cxt;
} CertPrepareArg;

static void
WorkerCertPrepare(void *arg)
{
	CertPrepareArg *a = (CertPrepareArg *) arg;

	wxpay_cert_refresh_prepare(a->r, a->name, a->nspoid, a->cxt);
}

/* Refresh one due config's certificates; returns whether one was tried. */
static bool
WorkerRefreshCertificates(MemoryContext cxt, long *sleep_ms)
{
	TimestampTz now = GetCurrentTimestamp();
	long		interval_ms = (long) wxpay_certificate_refresh_interval * 1000;
	List	   *names;
	ListCell   *lc;
	CertSchedule *due = NULL;
	WxpayCertRefresh *r;
	CertPrepareArg arg;
	WxpayCallResult failure;
	Oid			nspoid;

	if (wxpay_certificate_refresh_interval <= 0)
		return false;

	WorkerTxnBegin(cxt, "checking platform certificates");
	nspoid = WorkerExtensionSchema();
	if (!OidIsValid(nspoid))
	{
		WorkerTxnEnd(cxt);
		return false;
	}
	names = wxpay_cert_refresh_configs(nspoid);
	MemoryContextSwitchTo(cxt);
	foreach(lc, names)
	{
		CertSchedule *cs = CertScheduleFind((char *) lfirst(lc));

		if (cs->next <= now && due == NULL)
			due = cs;
		else if (cs->next > now)
		{
			long		secs;
			int			usecs;

			TimestampDifference(now, cs->next, &secs, &usecs);
			*sleep_ms = Min(*sleep_ms, secs * 1000 + usecs / 1000 + 1);
		}
	}
	if (due == NULL)
	{
		WorkerTxnEnd(cxt);
		return false;
	}

	/* whatever happens below, not again before the retry delay */
	due->next = TimestampTzPlusMilliseconds(now, Min(interval_ms, CERT_RETRY_MS));

	r = palloc0(sizeof(WxpayCertRefresh));
	arg.r = r;
	arg.name = due->name;
	arg.nspoid = nspoid;
	arg.cxt = cxt;
	if (!WorkerTry(WorkerCertPrepare, &arg, &failure))
	{
		WorkerTxnEnd(cxt);
		wxpay_report(&failure, WARNING);
		return true;
	}
	WorkerTxnEnd(cxt);

	pgstat_report_activity(STATE_RUNNING, "downloading platform certificates");
	wxpay_cert_refresh_send(r);

	WorkerTxnBegin(cxt, "storing platform certificates");
	if (wxpay_cert_refresh_finish(r))
	{
		int			nnew = 0;

		for (int i = 0; i < r->ncerts; i++)
			nnew += r->certs[i].is_new ? 1 : 0;
		due->next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), interval_ms);
		ereport(nnew > 0 ? LOG : DEBUG1,
				(errmsg("refreshed the platform certificates of wxpay configuration \"%s\": %d held, %d new",
						due->name, r->ncerts, nnew)));
	}
	else
		wxpay_report(&r->result, WARNING);
	WorkerTxnEnd(cxt);
	return true;
}

/* ----------------------------------------------------------------
 *		Per-merchant rate limit: at most wxpay.rate_limit requests whose
 *		batch ended within any one second.  A batch's requests all start
 *		after the previous batch ended, so counting each request at its
 *		batch's end keeps every one-second window within the limit.
 * ----------------------------------------------------------------
 */

static RateWindow *
RateFind(const char *mchid)
{
	bool		found;
	RateWindow *w = NamedEntry(&RateWindows, "wxpay rate windows",
							   sizeof(RateWindow), sizeof(w->mchid),
							   mchid, &found);

	if (!found)
	{
		w->n = 0;
		w->cap = 64;
		w->ends = MemoryContextAlloc(TopMemoryContext, sizeof(TimestampTz) * w->cap);
		w->counts = MemoryContextAlloc(TopMemoryContext, sizeof(int) * w->cap);
	}
	return w;
}

/*
 * The worker's entry for key in a table of its own (created on first use,
 * in TopMemoryContext); a key too long for the table is cut, which only
 * merges state of names that long.
 */
static void *
NamedEntry(HTAB **tab, const char *tabname, Size entrysize, Size keysize,
		   const char *key, bool *found)
{
	char		k[NAMEDATALEN * 2];

	if (*tab == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = keysize;
		ctl.entrysize = entrysize;
		*tab = hash_create(tabname, 16, &ctl, HASH_ELEM | HASH_STRINGS);
	}
	memset(k, 0, sizeof(k));
	strlcpy(k, key, Min(keysize, sizeof(k)));
	return hash_search(*tab, k, HASH_ENTER, found);
}

/* Drop entries older than a second; how many requests may start now. */
static int
RateAvailable(RateWindow *w, TimestampTz now, long *wait_ms)
{
	int			used = 0;
	int			keep = 0;
	TimestampTz horizon = now - USECS_PER_SEC;

	for (int i = 0; i < w->n; i++)
	{
		if (w->ends[i] > horizon && w->counts[i] > 0)
		{
			w->ends[keep] = w->ends[i];
			w->counts[keep] = w->counts[i];
			used += w->counts[keep];
			keep++;
		}
	}
	w->n = keep;

	if (rate_limit == 0)
		return INT_MAX;
	if (used < rate_limit)
		return rate_limit - used;

	/* full: wait until the oldest entry leaves the window */
	*wait_ms = (long) ((w->ends[0] + USECS_PER_SEC - now) / 1000) + 1;
	return 0;
}

static void
RateRecord(RateWindow *w, TimestampTz end, int count)
{
	if (count <= 0)
		return;
	if (w->n == w->cap)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		w->cap *= 2;
		w->ends = repalloc(w->ends, sizeof(TimestampTz) * w->cap);
		w->counts = repalloc(w->counts, sizeof(int) * w->cap);
		MemoryContextSwitchTo(old);
	}
	w->ends[w->n] = end;
	w->counts[w->n] = count;
	w->n++;
}
