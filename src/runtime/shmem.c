/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  The background processes' shared memory: who runs, wakeups, the
 *	  worker's settings, and the ProcessUtility hook.
 *
 * This is the bottom of the queue's process layer: every other file may
 * call it (enqueue and config triggers to wake the worker, the launcher and
 * the worker to announce themselves), and it calls none of them.
 *
 * One queue worker.  The worker takes the worker slot (worker_pid) under
 * the spinlock before it even connects to its database, and gives up if a
 * live worker holds it; it releases the slot in a before_shmem_exit
 * callback, and only while the slot is still its own.  A worker killed by a
 * signal makes the postmaster reinitialise shared memory, so a slot is never
 * left held by a dead process.  Whatever dies and restarts (the launcher on
 * an error or pg_terminate_backend, a worker the launcher started twice),
 * there is never more than one process serving the queue, and an exiting
 * process never clears another's pid or latch.
 *
 * Wakeups.  A committed enqueue, COMMIT PREPARED and a committed change of
 * wxpay_config bump a generation counter and set the worker's latch (or the
 * launcher's, when no worker runs).  The worker compares counters to learn
 * what changed: the queue (look for due rows), the keys (sign and verify
 * with fresh copies), the configs (refresh certificates at once).
 *
 * DROP DATABASE / ALTER DATABASE RENAME of the worker's database: the
 * worker is asked to leave only when the command will otherwise proceed
 * (the database exists, is not the current one, and the current user owns
 * it, and may create databases for a rename).  If the command fails anyway,
 * the launcher is told to start the worker again at once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/guc.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

#define LAUNCHER_RESTART_SECS	10

/* GUC variables */
char	   *wxpay_database_name = NULL;

/* Shared state, in the main shared memory segment. */
typedef struct WxpayShared
{
	slock_t		mutex;
	/* the launcher */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	/* the worker slot: the one process serving the queue */
	pid_t		worker_pid;
	Latch	   *worker_latch;
	bool		worker_starting;	/* registered, slot not yet taken */
	TimestampTz starting_since;
	/* how the last worker ended, for the launcher */
	bool		exit_pending;
	bool		exit_clean;		/* nothing to serve: wait to be asked */
	bool		exit_connected; /* it had connected to its database */
	bool		db_going;		/* its database is being dropped/renamed */
	bool		db_stayed;		/* ... but the command failed */
	bool		wake_pending;	/* a backend asked for a worker */
	uint64		generation[WXPAY_NUM_WAKES];
	ConditionVariable finished_cv;	/* broadcast after outcomes commit */
} WxpayShared;

/* local state */
static bool Preloaded = false;
static WxpayShared *Shared = NULL;
static shmem_startup_hook_type PrevShmemStartupHook = NULL;
static shmem_request_hook_type PrevShmemRequestHook = NULL;
static ProcessUtility_hook_type PrevProcessUtility = NULL;
static bool CallbackRegistered = false;
static bool WakeAtCommit[WXPAY_NUM_WAKES];

static void ProcessShmemRequest(void);
static void ProcessShmemStartup(void);
static void ProcessXactCallback(XactEvent event, void *arg);
static void ProcessUtilityHook(PlannedStmt *pstmt, const char *queryString,
							   bool readOnlyTree,
							   ProcessUtilityContext context,
							   ParamListInfo params,
							   QueryEnvironment *queryEnv,
							   DestReceiver *dest, QueryCompletion *qc);
static bool ProcessDatabaseWillGo(const char *dbname, bool rename,
								  const char *newname);
static void ProcessDatabaseGoing(void);
static void ProcessDatabaseStayed(void);
static void ProcessWorkerRelease(int code, Datum arg);
static void ProcessLauncherRelease(int code, Datum arg);
static void ProcessWake(WxpayWake what);

/* ----------------------------------------------------------------
 *		Setup, in the postmaster and every backend
 * ----------------------------------------------------------------
 */

void
WorkerInit(void)
{
	BackgroundWorker bgw;

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
	shmem_request_hook = ProcessShmemRequest;
	PrevShmemStartupHook = shmem_startup_hook;
	shmem_startup_hook = ProcessShmemStartup;
	PrevProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = ProcessUtilityHook;

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
ProcessShmemRequest(void)
{
	if (PrevShmemRequestHook)
		PrevShmemRequestHook();
	RequestAddinShmemSpace(MAXALIGN(sizeof(WxpayShared)));
}

static void
ProcessShmemStartup(void)
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

/* ----------------------------------------------------------------
 *		Wakeups
 * ----------------------------------------------------------------
 */

/*
 * Something changed: bump its generation and set the worker's latch, or
 * the launcher's so that it starts one.  Called after commit: may not fail.
 */
static void
ProcessWake(WxpayWake what)
{
	Latch	   *worker;
	Latch	   *launcher;

	if (Shared == NULL)
		return;
	SpinLockAcquire(&Shared->mutex);
	Shared->generation[what]++;
	Shared->wake_pending = true;
	worker = Shared->worker_latch;
	launcher = Shared->launcher_latch;
	SpinLockRelease(&Shared->mutex);

	/* no worker: a new config may have certificates to fetch, too */
	if (worker)
		SetLatch(worker);
	else if (launcher)
		SetLatch(launcher);
}

void
wxpay_worker_wake(void)
{
	ProcessWake(WXPAY_WAKE_QUEUE);
}

/* The generation counters, read together. */
void
wxpay_worker_generations(uint64 *gens)
{
	SpinLockAcquire(&Shared->mutex);
	memcpy(gens, Shared->generation, sizeof(Shared->generation));
	SpinLockRelease(&Shared->mutex);
}

static void
ProcessXactCallback(XactEvent event, void *arg)
{
	(void) arg;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			for (int i = 0; i < WXPAY_NUM_WAKES; i++)
			{
				if (WakeAtCommit[i])
				{
					WakeAtCommit[i] = false;
					ProcessWake((WxpayWake) i);
				}
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* nothing to do (yet): COMMIT PREPARED wakes the worker */
			memset(WakeAtCommit, 0, sizeof(WakeAtCommit));
			break;
		default:
			break;
	}
}

/*
 * Wake the worker about what when the current transaction commits (and only
 * then).  A no-op without the preloaded worker.
 */
void
wxpay_worker_wake_at_commit(WxpayWake what)
{
	if (!wxpay_worker_preloaded())
		return;
	if (!CallbackRegistered)
	{
		RegisterXactCallback(ProcessXactCallback, NULL);
		CallbackRegistered = true;
	}
	WakeAtCommit[what] = true;
	/* new keys are new configs too: fresh copies for signing */
	if (what == WXPAY_WAKE_CONFIG)
		WakeAtCommit[WXPAY_WAKE_KEYS] = true;
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
	/* the wait takes an int: callers loop for longer timeouts */
	timeout_ms = Max(Min(timeout_ms, (long) INT_MAX), 0);
	(void) ConditionVariableTimedSleep(&Shared->finished_cv, timeout_ms,
									   wxpay_wait_event(WXPAY_WAIT_STOP_REQUEST));
}

void
wxpay_worker_cancel_wait(void)
{
	ConditionVariableCancelSleep();
}

/* Outcomes have committed: wake the sessions waiting for them. */
void
wxpay_worker_broadcast_finished(void)
{
	ConditionVariableBroadcast(&Shared->finished_cv);
}

/* ----------------------------------------------------------------
 *		The worker slot and the launcher's view of it
 * ----------------------------------------------------------------
 */

/*
 * Take the worker slot for this process; false when a live worker holds it.
 * On success, the slot is released when this process exits.
 */
bool
wxpay_worker_slot_take(void)
{
	bool		taken = false;

	SpinLockAcquire(&Shared->mutex);
	Shared->worker_starting = false;
	if (Shared->worker_pid == 0)
	{
		Shared->worker_pid = MyProcPid;
		Shared->worker_latch = MyLatch;
		Shared->exit_pending = false;
		Shared->exit_clean = false;
		Shared->exit_connected = false;
		taken = true;
	}
	SpinLockRelease(&Shared->mutex);
	if (taken)
		before_shmem_exit(ProcessWorkerRelease, (Datum) 0);
	return taken;
}

/* The worker connected to its database; clean: it leaves on purpose. */
void
wxpay_worker_slot_report(bool connected, bool clean)
{
	SpinLockAcquire(&Shared->mutex);
	if (Shared->worker_pid == MyProcPid)
	{
		Shared->exit_connected = connected;
		Shared->exit_clean = clean;
	}
	SpinLockRelease(&Shared->mutex);
}

static void
ProcessWorkerRelease(int code, Datum arg)
{
	Latch	   *launcher = NULL;
	bool		mine = false;

	(void) code;
	(void) arg;
	SpinLockAcquire(&Shared->mutex);
	if (Shared->worker_pid == MyProcPid)
	{
		mine = true;
		Shared->worker_pid = 0;
		Shared->worker_latch = NULL;
		Shared->exit_pending = true;
		launcher = Shared->launcher_latch;
	}
	SpinLockRelease(&Shared->mutex);
	if (mine)
	{
		ereport(LOG,
				(errmsg("wxpay_signplan worker %d stopped serving database \"%s\"",
						(int) MyProcPid, wxpay_database_name)));
		if (launcher)
			SetLatch(launcher);
	}
}

/* The launcher announces itself; released when it exits. */
void
wxpay_launcher_attach(void)
{
	SpinLockAcquire(&Shared->mutex);
	Shared->launcher_pid = MyProcPid;
	Shared->launcher_latch = MyLatch;
	SpinLockRelease(&Shared->mutex);
	before_shmem_exit(ProcessLauncherRelease, (Datum) 0);
}

static void
ProcessLauncherRelease(int code, Datum arg)
{
	(void) code;
	(void) arg;
	SpinLockAcquire(&Shared->mutex);
	if (Shared->launcher_pid == MyProcPid)
	{
		Shared->launcher_pid = 0;
		Shared->launcher_latch = NULL;
	}
	SpinLockRelease(&Shared->mutex);
}

/*
 * The launcher's view: who serves (0: nobody), whether a worker it started
 * has yet to take the slot, and how the last worker ended (consumed).
 */
void
wxpay_launcher_status(WxpayWorkerStatus *st)
{
	SpinLockAcquire(&Shared->mutex);
	st->pid = Shared->worker_pid;
	st->starting = Shared->worker_starting;
	st->starting_since = Shared->starting_since;
	st->exited = Shared->exit_pending;
	st->clean = Shared->exit_clean;
	st->connected = Shared->exit_connected;
	st->going = Shared->db_going;
	st->stayed = Shared->db_stayed;
	st->wake = Shared->wake_pending;
	if (st->exited)
	{
		Shared->exit_pending = false;
		Shared->exit_clean = false;
		Shared->exit_connected = false;
		Shared->db_going = false;
		Shared->db_stayed = false;
	}
	Shared->wake_pending = false;
	SpinLockRelease(&Shared->mutex);
}

/* The launcher is about to start a worker, or gave up on one. */
void
wxpay_launcher_set_starting(bool starting)
{
	SpinLockAcquire(&Shared->mutex);
	Shared->worker_starting = starting;
	Shared->starting_since = GetCurrentTimestamp();
	SpinLockRelease(&Shared->mutex);
}

/* ----------------------------------------------------------------
 *		The ProcessUtility hook
 * ----------------------------------------------------------------
 */

/*
 * COMMIT PREPARED may make queued requests visible; DROP DATABASE and
 * ALTER DATABASE RENAME of the worker's database must not wait for it.
 */
static void
ProcessUtilityHook(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *node = pstmt->utilityStmt;
	volatile bool commit_prepared = false;
	volatile bool going = false;

	if (IsA(node, TransactionStmt))
		commit_prepared =
			((TransactionStmt *) node)->kind == TRANS_STMT_COMMIT_PREPARED;
	else if (IsA(node, DropdbStmt))
		going = ProcessDatabaseWillGo(((DropdbStmt *) node)->dbname, false, NULL);
	else if (IsA(node, RenameStmt))
	{
		RenameStmt *rs = (RenameStmt *) node;

		if (rs->renameType == OBJECT_DATABASE)
			going = ProcessDatabaseWillGo(rs->subname, true, rs->newname);
	}

	if (going)
		ProcessDatabaseGoing();

	PG_TRY();
	{
		if (PrevProcessUtility)
			PrevProcessUtility(pstmt, queryString, readOnlyTree, context,
							   params, queryEnv, dest, qc);
		else
			standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
									params, queryEnv, dest, qc);
	}
	PG_CATCH();
	{
		/* the database stays after all: serve it again at once */
		if (going)
			ProcessDatabaseStayed();
		PG_RE_THROW();
	}
	PG_END_TRY();

	if (commit_prepared)
		wxpay_worker_wake();
}

/*
 * Will DROP DATABASE / ALTER DATABASE RENAME of dbname proceed, as far as
 * can be told before it runs?  Only then is the worker asked to leave, so
 * that a role that may not drop the database cannot stop the worker.
 */
static bool
ProcessDatabaseWillGo(const char *dbname, bool rename, const char *newname)
{
	Oid			dboid;

	if (Shared == NULL || wxpay_database_name == NULL || dbname == NULL ||
		strcmp(dbname, wxpay_database_name) != 0)
		return false;
	/* both refuse to run in a transaction block */
	if (IsTransactionBlock())
		return false;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || dboid == MyDatabaseId)
		return false;
#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(DatabaseRelationId, dboid, GetUserId()))
		return false;
#else
	if (!pg_database_ownercheck(dboid, GetUserId()))
		return false;
#endif
	if (rename)
	{
		if (!have_createdb_privilege())
			return false;
		if (newname == NULL || OidIsValid(get_database_oid(newname, true)))
			return false;
	}
	return true;
}

/* Ask the queue worker to leave its database, which is being dropped. */
static void
ProcessDatabaseGoing(void)
{
	pid_t		pid;

	SpinLockAcquire(&Shared->mutex);
	Shared->db_going = true;
	pid = Shared->worker_pid;
	SpinLockRelease(&Shared->mutex);
	if (pid != 0)
		kill(pid, SIGTERM);
}

/* The command failed: the launcher may start the worker again at once. */
static void
ProcessDatabaseStayed(void)
{
	Latch	   *launcher;

	SpinLockAcquire(&Shared->mutex);
	Shared->db_stayed = true;
	Shared->db_going = false;
	launcher = Shared->launcher_latch;
	SpinLockRelease(&Shared->mutex);
	if (launcher)
		SetLatch(launcher);
}
