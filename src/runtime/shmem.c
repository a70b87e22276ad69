/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  The background processes' shared memory: one entry per database
 *	  (its worker, its wakeups), the launcher, the rate windows' area, and
 *	  the ProcessUtility hook.
 *
 * This is the bottom of the queue's process layer: every other file may
 * call it (enqueue and config triggers to wake their database's worker, the
 * launcher and the workers to announce themselves), and it calls none of
 * them.
 *
 * One entry per database (WXPAY_MAX_DATABASES of them, keyed by OID, under
 * one LWLock).  An entry holds what the launcher knows of the database (may
 * it be served at all: it allows connections and is not a template; is the
 * extension installed there: unknown, yes, no), its worker (pid and latch,
 * or a worker started that has not yet taken the entry), how its last
 * worker ended, and its wakeups.  Entries live as long as shared memory:
 * the launcher frees those of databases gone from pg_database.  "No
 * extension" is remembered so that no worker ever connects to such a
 * database again, until a backend in that database wakes it (CREATE
 * EXTENSION, the config trigger, an enqueue: they run there, so the
 * extension is there) or the database is dropped.
 *
 * One worker per database.  A worker takes its database's entry under the
 * lock before it even connects, and gives up if a live worker holds it; it
 * releases the entry in a before_shmem_exit callback, and only while the
 * entry is still its own.  A worker killed by a signal makes the postmaster
 * reinitialise shared memory, so an entry is never left held by a dead
 * process.  How many workers run at once is the launcher's business
 * (wxpay.max_workers).
 *
 * Wakeups.  A committed enqueue, COMMIT PREPARED and a committed change of
 * wxpay_config bump a generation counter of the current database's entry,
 * mark it as having work, and set its worker's latch (or the launcher's,
 * when no worker serves it).  The worker compares counters to learn what
 * changed: the queue (look for due rows), the keys (sign and verify with
 * fresh copies), the configs (refresh certificates at once).
 *
 * DROP DATABASE, ALTER DATABASE RENAME / SET TABLESPACE and CREATE DATABASE
 * ... TEMPLATE of a served database: its worker is asked to leave only when the command will
 * otherwise proceed (the database exists, is not the current one, the
 * current user owns it, and may create databases for a rename or a copy).
 * Unless it was dropped, the launcher is told to serve it again as soon as
 * the command ends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
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
int			wxpay_max_workers = 4;
int			wxpay_worker_idle_timeout = 300;	/* s */

/* Shared state, in the main shared memory segment. */
typedef struct WxpayShared
{
	LWLock	   *lock;			/* the entries and the launcher */
	LWLock	   *rate_lock;		/* the rate windows' area */
	/* the launcher */
	pid_t		launcher_pid;
	Latch	   *launcher_latch;
	bool		rescan;			/* pg_database changed: look again */
	ConditionVariable finished_cv;	/* broadcast after outcomes commit */
	WxpayDbEntry dbs[WXPAY_MAX_DATABASES];
} WxpayShared;

/* local state */
static bool Preloaded = false;
static WxpayShared *Shared = NULL;
static char *RateArea = NULL;
static WxpayDbEntry *MyEntry = NULL;	/* a worker's own entry */
static char MyDatabaseName[NAMEDATALEN] = "?";	/* ... and its name */
static shmem_startup_hook_type PrevShmemStartupHook = NULL;
static shmem_request_hook_type PrevShmemRequestHook = NULL;
static ProcessUtility_hook_type PrevProcessUtility = NULL;
static bool CallbackRegistered = false;
static bool WakeAtCommit[WXPAY_NUM_WAKES];
static bool RescanAtCommit = false;

static void ProcessShmemRequest(void);
static void ProcessShmemStartup(void);
static void ProcessXactCallback(XactEvent event, void *arg);
static void ProcessUtilityHook(PlannedStmt *pstmt, const char *queryString,
							   bool readOnlyTree,
							   ProcessUtilityContext context,
							   ParamListInfo params,
							   QueryEnvironment *queryEnv,
							   DestReceiver *dest, QueryCompletion *qc);
static Oid	ProcessDatabaseWillGo(const char *dbname, bool rename,
								  const char *newname);
static void ProcessDatabaseGoing(Oid dboid);
static void ProcessDatabaseStayed(Oid dboid);
static void ProcessRescan(void);
static void ProcessWorkerRelease(int code, Datum arg);
static void ProcessLauncherRelease(int code, Datum arg);
static void ProcessWake(WxpayWake what);
static WxpayDbEntry *ProcessEntry(Oid dboid, bool create);

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
							   "Deprecated: restricts the background workers to this one database.",
							   "Empty (the default) serves every database where the extension is installed.",
							   &wxpay_database_name,
							   "",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("wxpay.max_workers",
							"Sets the most queue workers that run at once, one per database with work.",
							"More databases with work than this are served in turn.",
							&wxpay_max_workers,
							4, 1, 64,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("wxpay.worker_idle_timeout",
							"Sets how long a queue worker stays after its database last had work.",
							"The launcher starts it again when work comes.  Zero keeps workers running.",
							&wxpay_worker_idle_timeout,
							300, 0, 86400,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	PrevShmemRequestHook = shmem_request_hook;
	shmem_request_hook = ProcessShmemRequest;
	PrevShmemStartupHook = shmem_startup_hook;
	shmem_startup_hook = ProcessShmemStartup;
	PrevProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = ProcessUtilityHook;

	wxpay_bgworker_init(&bgw, "wxpay_launcher_main", "wxpay_signplan launcher",
						LAUNCHER_RESTART_SECS);
	RegisterBackgroundWorker(&bgw);
}

/*
 * Fill in a background worker of this library: its entry point, its name
 * (also its type, the backend_type pg_stat_activity shows), shared memory
 * and a database connection, started once recovery has finished (never on
 * a standby), restarted after restart_secs (or BGW_NEVER_RESTART).  The
 * launcher and the queue workers are both made here, so they differ only
 * where they must.
 */
void
wxpay_bgworker_init(BackgroundWorker *bgw, const char *function,
					const char *name, int restart_secs)
{
	memset(bgw, 0, sizeof(*bgw));
	bgw->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw->bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw->bgw_restart_time = restart_secs;
	strlcpy(bgw->bgw_library_name, "wxpay_signplan", BGW_MAXLEN);
	strlcpy(bgw->bgw_function_name, function, BGW_MAXLEN);
	strlcpy(bgw->bgw_name, name, BGW_MAXLEN);
	strlcpy(bgw->bgw_type, name, BGW_MAXLEN);
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
	RequestAddinShmemSpace(MAXALIGN(WXPAY_RATE_AREA_SIZE));
	RequestNamedLWLockTranche("wxpay_signplan", 2);
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
		LWLockPadded *locks = GetNamedLWLockTranche("wxpay_signplan");

		memset(Shared, 0, sizeof(WxpayShared));
		Shared->lock = &locks[0].lock;
		Shared->rate_lock = &locks[1].lock;
		ConditionVariableInit(&Shared->finished_cv);
	}
	RateArea = ShmemInitStruct("wxpay_signplan rate windows",
							   WXPAY_RATE_AREA_SIZE, &found);
	if (!found)
		memset(RateArea, 0, WXPAY_RATE_AREA_SIZE);
	LWLockRelease(AddinShmemInitLock);
}

/* The rate windows' area (ratelimit.c's layout) and its lock. */
char *
wxpay_rate_area(LWLock **lock)
{
	*lock = Shared->rate_lock;
	return RateArea;
}

/*
 * The entry of database dboid, created (as unknown: the launcher decides)
 * when asked and there is room; NULL otherwise.  Caller holds the lock,
 * exclusively when creating.
 */
static WxpayDbEntry *
ProcessEntry(Oid dboid, bool create)
{
	WxpayDbEntry *free_entry = NULL;

	for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
	{
		WxpayDbEntry *e = &Shared->dbs[i];

		if (e->dboid == dboid)
			return e;
		if (e->dboid == InvalidOid && free_entry == NULL)
			free_entry = e;
	}
	if (!create || free_entry == NULL)
		return NULL;
	memset(free_entry, 0, sizeof(WxpayDbEntry));
	free_entry->dboid = dboid;
	free_entry->ext = WXPAY_EXT_UNKNOWN;
	free_entry->next_due = DT_NOEND;
	free_entry->delay_ms = 0;
	Shared->rescan = true;		/* servable? the launcher looks */
	return free_entry;
}

/* ----------------------------------------------------------------
 *		Wakeups
 * ----------------------------------------------------------------
 */

/*
 * Something changed in this database: bump its generation and set its
 * worker's latch, or the launcher's so that it starts one.  Called after
 * commit: may not fail.
 */
static void
ProcessWake(WxpayWake what)
{
	WxpayDbEntry *e;
	Latch	   *worker = NULL;
	Latch	   *launcher;

	if (Shared == NULL || !OidIsValid(MyDatabaseId))
		return;
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	e = ProcessEntry(MyDatabaseId, true);
	if (e != NULL)
	{
		e->generation[what]++;
		e->wake = true;
		/* this runs the extension's code here: it is installed */
		if (e->ext == WXPAY_EXT_ABSENT)
			e->ext = WXPAY_EXT_UNKNOWN;
		worker = e->worker_latch;
	}
	launcher = Shared->launcher_latch;
	LWLockRelease(Shared->lock);

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

/* The generation counters of the worker's database, read together. */
void
wxpay_worker_generations(uint64 *gens)
{
	if (MyEntry == NULL)
	{
		memset(gens, 0, sizeof(uint64) * WXPAY_NUM_WAKES);
		return;
	}
	LWLockAcquire(Shared->lock, LW_SHARED);
	memcpy(gens, MyEntry->generation, sizeof(MyEntry->generation));
	LWLockRelease(Shared->lock);
}

/*
 * When the previous workers of this database said config name's platform
 * certificates are next due, or 0 (due at once) when no worker said so
 * since shared memory was made or since a config changed (config_gen is
 * the generation the caller has acted on).  A worker started on demand
 * then downloads nothing that is not due.
 */
TimestampTz
wxpay_worker_cert_recall(const char *name, uint64 config_gen)
{
	TimestampTz next = 0;

	if (MyEntry == NULL)
		return 0;
	LWLockAcquire(Shared->lock, LW_SHARED);
	for (int i = 0; i < WXPAY_CERT_MEMOS; i++)
	{
		WxpayCertMemo *m = &MyEntry->certs[i];

		if (m->config_gen == config_gen && m->name[0] != '\0' &&
			strcmp(m->name, name) == 0)
		{
			next = m->next;
			break;
		}
	}
	LWLockRelease(Shared->lock);
	return next;
}

/*
 * Remember when config name's certificates are next due.  A name too long
 * for a slot is not remembered (its next worker refreshes at once); when
 * every slot is taken, the one of an older generation or due soonest goes.
 */
void
wxpay_worker_cert_remember(const char *name, uint64 config_gen, TimestampTz next)
{
	WxpayCertMemo *slot = NULL;

	if (MyEntry == NULL || strlen(name) >= WXPAY_CERT_MEMO_NAME)
		return;
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	for (int i = 0; i < WXPAY_CERT_MEMOS && slot == NULL; i++)
		if (strcmp(MyEntry->certs[i].name, name) == 0)
			slot = &MyEntry->certs[i];
	for (int i = 0; i < WXPAY_CERT_MEMOS && slot == NULL; i++)
		if (MyEntry->certs[i].name[0] == '\0' ||
			MyEntry->certs[i].config_gen != config_gen)
			slot = &MyEntry->certs[i];
	if (slot == NULL)
	{
		slot = &MyEntry->certs[0];
		for (int i = 1; i < WXPAY_CERT_MEMOS; i++)
			if (MyEntry->certs[i].next < slot->next)
				slot = &MyEntry->certs[i];
	}
	strlcpy(slot->name, name, sizeof(slot->name));
	slot->config_gen = config_gen;
	slot->next = next;
	LWLockRelease(Shared->lock);
}

static void
ProcessXactCallback(XactEvent event, void *arg)
{
	(void) arg;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (RescanAtCommit)
			{
				RescanAtCommit = false;
				ProcessRescan();
			}
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
			RescanAtCommit = false;
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
 * then sleep until a worker has committed outcomes or timeout_ms passed.
 * One condition variable for the cluster: a waiter woken by another
 * database's worker looks at its row and sleeps again.
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
 *		A worker's entry
 * ----------------------------------------------------------------
 */

/*
 * Take database dboid's entry for this process; false when a live worker
 * holds it, when its database is going away, or when it has no entry.  On
 * success, the entry is released when this process exits.
 */
bool
wxpay_worker_slot_take(Oid dboid)
{
	WxpayDbEntry *e;
	bool		taken = false;

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	e = ProcessEntry(dboid, false);
	if (e != NULL)
	{
		e->starting = false;
		if (e->worker_pid == 0 && !e->going)
		{
			e->worker_pid = MyProcPid;
			e->worker_latch = MyLatch;
			e->started_at = GetCurrentTimestamp();
			e->exit_pending = false;
			e->exit_clean = false;
			e->exit_connected = false;
			e->exit_idle = false;
			e->yield = false;
			taken = true;
		}
	}
	LWLockRelease(Shared->lock);
	if (taken)
	{
		MyEntry = e;
		before_shmem_exit(ProcessWorkerRelease, (Datum) 0);
	}
	return taken;
}

/*
 * The worker connected; clean: it leaves on purpose.  ext: what it found
 * (WXPAY_EXT_UNKNOWN: leave as it is).
 */
void
wxpay_worker_slot_report(bool connected, bool clean, WxpayExtState ext)
{
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	if (MyEntry != NULL && MyEntry->worker_pid == MyProcPid)
	{
		MyEntry->exit_connected = connected;
		MyEntry->exit_clean = clean;
		/*
		 * "Absent" only when no backend of the database asked since this
		 * worker looked: CREATE EXTENSION may have committed meanwhile.
		 */
		if (ext == WXPAY_EXT_PRESENT ||
			(ext == WXPAY_EXT_ABSENT && !MyEntry->wake))
			MyEntry->ext = ext;
	}
	LWLockRelease(Shared->lock);
}

/*
 * A new round of the worker's loop: whatever woke it is about to be seen.
 * Returns whether anything had asked since the last round.
 */
bool
wxpay_worker_take_wake(void)
{
	bool		wake;

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	wake = MyEntry->wake;
	MyEntry->wake = false;
	LWLockRelease(Shared->lock);
	return wake;
}

/* The launcher wants this worker's place for another database. */
bool
wxpay_worker_yield_wanted(void)
{
	bool		yield;

	if (MyEntry == NULL)
		return false;
	LWLockAcquire(Shared->lock, LW_SHARED);
	yield = MyEntry->yield;
	LWLockRelease(Shared->lock);
	return yield;
}

/*
 * The worker may leave: its database had nothing to do for a while, or it
 * gives its place to another database (yielding).  Unless something asked
 * meanwhile; then false, and it goes on.  next_due: when its database next
 * has something due (DT_NOEND: only when asked).
 */
bool
wxpay_worker_leave(TimestampTz next_due, bool yielding)
{
	bool		leave = false;

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	if (MyEntry->worker_pid == MyProcPid && (yielding || !MyEntry->wake))
	{
		MyEntry->next_due = yielding ? 0 : next_due;
		MyEntry->exit_clean = true;
		MyEntry->exit_connected = true;
		MyEntry->exit_idle = true;
		leave = true;
	}
	LWLockRelease(Shared->lock);
	return leave;
}

/* The served database's name, for the worker's messages. */
void
wxpay_worker_set_database(const char *name)
{
	strlcpy(MyDatabaseName, name, sizeof(MyDatabaseName));
}

const char *
wxpay_worker_database(void)
{
	return MyDatabaseName;
}

static void
ProcessWorkerRelease(int code, Datum arg)
{
	Latch	   *launcher = NULL;
	bool		mine;

	(void) code;
	(void) arg;
	/*
	 * Said while the place is still this worker's, so that in the log it
	 * comes before the next worker's "started serving" line.
	 */
	LWLockAcquire(Shared->lock, LW_SHARED);
	mine = MyEntry->worker_pid == MyProcPid;
	LWLockRelease(Shared->lock);
	if (!mine)
		return;
	ereport(LOG,
			(errmsg("wxpay_signplan worker %d stopped serving database \"%s\"",
					(int) MyProcPid, wxpay_worker_database())));
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	if (MyEntry->worker_pid == MyProcPid)
	{
		MyEntry->worker_pid = 0;
		MyEntry->worker_latch = NULL;
		MyEntry->exit_pending = true;
		MyEntry->last_exit = GetCurrentTimestamp();
		launcher = Shared->launcher_latch;
	}
	LWLockRelease(Shared->lock);
	if (launcher)
		SetLatch(launcher);
}

/* ----------------------------------------------------------------
 *		The launcher
 * ----------------------------------------------------------------
 */

/* The launcher announces itself; released when it exits. */
void
wxpay_launcher_attach(void)
{
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	Shared->launcher_pid = MyProcPid;
	Shared->launcher_latch = MyLatch;
	Shared->rescan = true;
	LWLockRelease(Shared->lock);
	before_shmem_exit(ProcessLauncherRelease, (Datum) 0);
}

static void
ProcessLauncherRelease(int code, Datum arg)
{
	(void) code;
	(void) arg;
	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	if (Shared->launcher_pid == MyProcPid)
	{
		Shared->launcher_pid = 0;
		Shared->launcher_latch = NULL;
	}
	LWLockRelease(Shared->lock);
}

/*
 * The launcher (and the monitoring function) read and change the entries
 * under the lock: wxpay_db_entries returns them with the lock held (in the
 * mode asked), wxpay_db_entries_done releases it.  *rescan: whether
 * pg_database should be read again (consumed when held exclusively).
 */
WxpayDbEntry *
wxpay_db_entries(bool exclusive, bool *rescan, pid_t *launcher_pid)
{
	LWLockAcquire(Shared->lock, exclusive ? LW_EXCLUSIVE : LW_SHARED);
	if (rescan)
	{
		*rescan = Shared->rescan;
		if (exclusive)
			Shared->rescan = false;
	}
	if (launcher_pid)
		*launcher_pid = Shared->launcher_pid;
	return Shared->dbs;
}

void
wxpay_db_entries_done(void)
{
	LWLockRelease(Shared->lock);
}

/* A new entry for dboid, found by the launcher (lock held exclusively). */
WxpayDbEntry *
wxpay_db_entry_add(Oid dboid)
{
	WxpayDbEntry *e = ProcessEntry(dboid, true);

	if (e != NULL)
		Shared->rescan = false; /* the launcher is looking now */
	return e;
}

/* pg_database changed: the launcher reads it again. */
static void
ProcessRescan(void)
{
	Latch	   *launcher;

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	Shared->rescan = true;
	launcher = Shared->launcher_latch;
	LWLockRelease(Shared->lock);
	if (launcher)
		SetLatch(launcher);
}

/* ----------------------------------------------------------------
 *		The ProcessUtility hook
 * ----------------------------------------------------------------
 */

/*
 * COMMIT PREPARED may make queued requests visible; CREATE EXTENSION makes
 * a database worth serving; DROP DATABASE, ALTER DATABASE RENAME and CREATE
 * DATABASE ... TEMPLATE of a served database must not wait for its worker.
 */
static void
ProcessUtilityHook(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *node = pstmt->utilityStmt;
	volatile bool commit_prepared = false;
	volatile bool created = false;
	volatile bool dbchange = false;
	volatile bool dropping = false;
	volatile Oid going = InvalidOid;

	if (IsA(node, TransactionStmt))
		commit_prepared =
			((TransactionStmt *) node)->kind == TRANS_STMT_COMMIT_PREPARED;
	else if (IsA(node, CreateExtensionStmt))
		created = strcmp(((CreateExtensionStmt *) node)->extname,
						 "wxpay_signplan") == 0;
	else if (IsA(node, DropdbStmt))
	{
		going = ProcessDatabaseWillGo(((DropdbStmt *) node)->dbname, false, NULL);
		dropping = true;
		dbchange = true;
	}
	else if (IsA(node, RenameStmt))
	{
		RenameStmt *rs = (RenameStmt *) node;

		if (rs->renameType == OBJECT_DATABASE)
		{
			going = ProcessDatabaseWillGo(rs->subname, true, rs->newname);
			dbchange = true;
		}
	}
	else if (IsA(node, CreatedbStmt))
	{
		ListCell   *lc;

		foreach(lc, ((CreatedbStmt *) node)->options)
		{
			DefElem    *d = lfirst(lc);

			if (strcmp(d->defname, "template") == 0 && d->arg != NULL)
				going = ProcessDatabaseWillGo(defGetString(d), true, NULL);
		}
		dbchange = true;
	}
	else if (IsA(node, AlterDatabaseStmt))
	{
		AlterDatabaseStmt *as = (AlterDatabaseStmt *) node;
		ListCell   *lc;

		/* SET TABLESPACE, too, needs the database to itself */
		foreach(lc, as->options)
		{
			DefElem    *d = lfirst(lc);

			if (strcmp(d->defname, "tablespace") == 0)
				going = ProcessDatabaseWillGo(as->dbname, false, NULL);
		}
		dbchange = true;
	}

	if (OidIsValid(going))
		ProcessDatabaseGoing(going);

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
		if (OidIsValid(going))
			ProcessDatabaseStayed(going);
		PG_RE_THROW();
	}
	PG_END_TRY();

	/* renamed or copied: the same database, served again at once */
	if (OidIsValid(going) && !dropping)
		ProcessDatabaseStayed(going);
	/* the launcher reads pg_database once the change is visible */
	if (dbchange && Shared != NULL)
	{
		if (!CallbackRegistered)
		{
			RegisterXactCallback(ProcessXactCallback, NULL);
			CallbackRegistered = true;
		}
		RescanAtCommit = true;
	}
	if (commit_prepared)
		wxpay_worker_wake();
	if (created)
		wxpay_worker_wake_at_commit(WXPAY_WAKE_QUEUE);
}

/*
 * Will DROP DATABASE / ALTER DATABASE RENAME / CREATE DATABASE ... TEMPLATE
 * of dbname proceed, as far as can be told before it runs?  Only then is
 * its worker asked to leave, so that a role that may not run the command
 * cannot stop the worker.  Returns its OID, or InvalidOid.
 */
static Oid
ProcessDatabaseWillGo(const char *dbname, bool needs_createdb,
					  const char *newname)
{
	Oid			dboid;

	if (Shared == NULL || dbname == NULL)
		return InvalidOid;
	/* they refuse to run in a transaction block */
	if (IsTransactionBlock())
		return InvalidOid;
	dboid = get_database_oid(dbname, true);
	if (!OidIsValid(dboid) || dboid == MyDatabaseId)
		return InvalidOid;
#if PG_VERSION_NUM >= 160000
	if (!object_ownercheck(DatabaseRelationId, dboid, GetUserId()))
		return InvalidOid;
#else
	if (!pg_database_ownercheck(dboid, GetUserId()))
		return InvalidOid;
#endif
	if (needs_createdb)
	{
		if (!have_createdb_privilege())
			return InvalidOid;
		if (newname != NULL && OidIsValid(get_database_oid(newname, true)))
			return InvalidOid;
	}
	return dboid;
}

/* Ask the database's worker to leave: the database is being dropped. */
static void
ProcessDatabaseGoing(Oid dboid)
{
	WxpayDbEntry *e;
	pid_t		pid = 0;

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	e = ProcessEntry(dboid, false);
	if (e != NULL)
	{
		e->going = true;
		e->going_since = GetCurrentTimestamp();
		pid = e->worker_pid;
	}
	LWLockRelease(Shared->lock);
	if (pid != 0)
		kill(pid, SIGTERM);
}

/* The command is over and the database is still there: serve it again. */
static void
ProcessDatabaseStayed(Oid dboid)
{
	WxpayDbEntry *e;
	Latch	   *launcher;

	LWLockAcquire(Shared->lock, LW_EXCLUSIVE);
	e = ProcessEntry(dboid, false);
	if (e != NULL && e->going)
	{
		e->going = false;
		e->stayed = true;
	}
	launcher = Shared->launcher_latch;
	LWLockRelease(Shared->lock);
	if (launcher)
		SetLatch(launcher);
}
