/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: a background worker connected to no database that
 *	  starts a queue worker in each database that needs one.
 *
 * The postmaster starts the launcher (and restarts it 10 s after it dies).
 * The launcher reads pg_database (a heap scan: it has no database, and
 * pg_database is a shared catalog) at startup, whenever a backend runs
 * CREATE/ALTER/DROP DATABASE, and every minute; each database that allows
 * connections and is not a template gets an entry in shared memory
 * (shmem.c).  Templates and databases that do not allow connections never
 * get a worker: a worker would keep CREATE DATABASE ... TEMPLATE from
 * copying them, and could not connect to the others.
 *
 * Whether the extension is installed in a database is learnt once: the
 * launcher starts a worker there, which exits at once when it finds none;
 * the entry then says "absent" and no worker connects there again until a
 * backend of that database wakes it (CREATE EXTENSION, a config, an
 * enqueue) or the database goes.
 *
 * A worker is started when its database has work: a backend woke it, the
 * next due request or certificate refresh its last worker announced has
 * come, or the extension is not yet known there.  It exits after
 * wxpay.worker_idle_timeout without work.  At most wxpay.max_workers run at
 * once; the databases waiting for one are served longest-waiting first,
 * and when some wait while all the places are taken, the worker that has
 * served longest (at least WORKER_TURN_MS) is asked to give its place once
 * its requests in flight are done, so that none is starved.  A worker that
 * fails is started again after growing delays (1 s doubling to 5 min, per
 * database).  When max_worker_processes is exhausted the launcher says so
 * once, and tries again every EXHAUSTED_RETRY_MS.
 *
 * The launcher keeps nothing that matters in its own memory: who serves
 * which database and how the last worker ended live in shared memory.  A
 * restarted launcher therefore finds running workers and leaves them alone.
 *
 * wxpay_queue_workers() shows the same from SQL: the launcher and every
 * database's entry, what runs there or why nothing does.
 *
 * wxpay.database_name (deprecated): when set, only that database is served,
 * and the launcher says when it does not exist, looking again with growing
 * delays.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "libpq/pqsignal.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "wxpay_signplan.h"

#define WORKER_RETRY_MIN_MS		1000
#define WORKER_RETRY_MAX_MS		(300 * 1000)
#define WORKER_GOING_MS			(10 * 1000)
#define WORKER_START_GRACE_MS	(30 * 1000)
#define WORKER_TURN_MS			(10 * 1000)
#define LAUNCHER_SCAN_MS		(60 * 1000)
#define EXHAUSTED_RETRY_MS		(10 * 1000)

/* one row of pg_database */
typedef struct LauncherDb
{
	Oid			oid;
	NameData	name;
	bool		servable;
} LauncherDb;

/* local state */
static BackgroundWorkerHandle *Handles[WXPAY_MAX_DATABASES];
static Oid	HandleDb[WXPAY_MAX_DATABASES];
static bool ExhaustedSaid = false;
static TimestampTz ExhaustedUntil = 0;
static bool FullSaid = false;

static List *LauncherReadDatabases(void);
static bool LauncherScan(bool first);
static long LauncherSchedule(TimestampTz now);
static bool LauncherStartWorker(int i, WxpayDbEntry *e);
static long LauncherMsUntil(TimestampTz now, TimestampTz t);

void
wxpay_launcher_main(Datum arg)
{
	TimestampTz next_scan = 0;
	long		missing_delay = WORKER_RETRY_MIN_MS;
	bool		first = true;

	(void) arg;
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* no database: this only makes the launcher visible in pg_stat_activity */
	wxpay_pinned_prepare();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);
	wxpay_pinned_apply();
	pgstat_report_appname("wxpay_signplan launcher");

	wxpay_launcher_attach();
	if (wxpay_database_name != NULL && wxpay_database_name[0] != '\0')
		ereport(WARNING,
				(errcode(ERRCODE_WARNING_DEPRECATED_FEATURE),
				 errmsg("wxpay.database_name is deprecated"),
				 errdetail("Only database \"%s\" is served.  Without the setting, every database where the extension is installed is served.",
						   wxpay_database_name),
				 errhint("Remove wxpay.database_name from the server's configuration and restart the server.")));

	for (;;)
	{
		long		timeout;
		bool		rescan;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		(void) wxpay_db_entries(true, &rescan, NULL);
		wxpay_db_entries_done();
		now = GetCurrentTimestamp();
		if (rescan || now >= next_scan)
		{
			if (LauncherScan(first))
			{
				missing_delay = WORKER_RETRY_MIN_MS;
				next_scan = TimestampTzPlusMilliseconds(now, LAUNCHER_SCAN_MS);
			}
			else
			{
				/* wxpay.database_name names no database: look again */
				ereport(LOG,
						(errcode(ERRCODE_UNDEFINED_DATABASE),
						 errmsg("wxpay_signplan worker not started: database \"%s\" does not exist",
								wxpay_database_name),
						 errdetail("wxpay.database_name names it.  The launcher looks again in %ld s.",
								   missing_delay / 1000),
						 errhint("Create that database and run CREATE EXTENSION wxpay_signplan in it, or set wxpay.database_name to the database where the extension is installed and restart the server.")));
				next_scan = TimestampTzPlusMilliseconds(now, missing_delay);
				missing_delay = Min(missing_delay * 2, WORKER_RETRY_MAX_MS);
			}
			first = false;
		}

		timeout = LauncherSchedule(GetCurrentTimestamp());
		timeout = Min(timeout, LauncherMsUntil(GetCurrentTimestamp(), next_scan));

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH | WL_TIMEOUT,
						 Max(timeout, 1), wxpay_wait_event(WXPAY_WAIT_LAUNCHER));
		ResetLatch(MyLatch);
	}
}

static long
LauncherMsUntil(TimestampTz now, TimestampTz t)
{
	long		secs;
	int			usecs;

	if (t == DT_NOEND)
		return LAUNCHER_SCAN_MS;
	if (t <= now)
		return 0;
	TimestampDifference(now, t, &secs, &usecs);
	return Min(secs * 1000 + usecs / 1000 + 1, (long) LAUNCHER_SCAN_MS);
}

/*
 * The databases, read from pg_database in a short transaction.  The
 * launcher has no database, so no index can be opened: a heap scan (the
 * way the autovacuum launcher lists databases).
 */
static List *
LauncherReadDatabases(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	List	   *dbs = NIL;
	MemoryContext cxt = CurrentMemoryContext;
	bool		only_one = wxpay_database_name != NULL &&
		wxpay_database_name[0] != '\0';

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, "reading pg_database");
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		MemoryContext old = MemoryContextSwitchTo(cxt);
		LauncherDb *d = palloc(sizeof(LauncherDb));

		d->oid = db->oid;
		d->name = db->datname;
		d->servable = db->datallowconn && !db->datistemplate;
#ifdef DATCONNLIMIT_INVALID_DB
		if (db->datconnlimit == DATCONNLIMIT_INVALID_DB)
			d->servable = false;
#endif
		if (only_one && strcmp(NameStr(db->datname), wxpay_database_name) != 0)
			d->servable = false;
		dbs = lappend(dbs, d);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	return dbs;
}

/*
 * Bring the entries in line with pg_database: new databases get one, gone
 * ones lose theirs, a worker in a database that became a template or
 * stopped allowing connections is asked to leave.  Returns false when
 * wxpay.database_name names no database.
 */
static bool
LauncherScan(bool first)
{
	List	   *dbs = LauncherReadDatabases();
	WxpayDbEntry *es;
	ListCell   *lc;
	bool		only_one = wxpay_database_name != NULL &&
		wxpay_database_name[0] != '\0';
	bool		found = !only_one;
	bool		full = false;

	es = wxpay_db_entries(true, NULL, NULL);
	for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
		es[i].listed = false;
	foreach(lc, dbs)
	{
		LauncherDb *d = lfirst(lc);
		WxpayDbEntry *e = NULL;

		if (only_one && strcmp(NameStr(d->name), wxpay_database_name) == 0)
			found = true;
		for (int i = 0; i < WXPAY_MAX_DATABASES && e == NULL; i++)
			if (es[i].dboid == d->oid)
				e = &es[i];
		if (e == NULL && d->servable)
		{
			e = wxpay_db_entry_add(d->oid);
			if (e == NULL)
				full = true;
		}
		if (e == NULL)
			continue;
		e->listed = true;
		e->servable = d->servable;
		if (!d->servable && e->worker_pid != 0)
			kill(e->worker_pid, SIGTERM);
		if (first && e->worker_pid != 0)
			ereport(LOG,
					(errmsg("wxpay_signplan launcher started; worker %d is already serving database \"%s\"",
							(int) e->worker_pid, NameStr(d->name))));
	}
	/* gone from pg_database: forget it once nothing runs there */
	for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
	{
		WxpayDbEntry *e = &es[i];

		if (e->dboid == InvalidOid || e->listed)
			continue;
		e->servable = false;
		if (e->worker_pid == 0 && !e->starting)
			e->dboid = InvalidOid;
	}
	wxpay_db_entries_done();

	if (first)
		ereport(LOG,
				(errmsg("wxpay_signplan launcher started")));
	if (full && !FullSaid)
		ereport(LOG,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("wxpay_signplan serves at most %d databases", WXPAY_MAX_DATABASES),
				 errdetail("Databases beyond that are not served until others are dropped.")));
	FullSaid = full;
	list_free_deep(dbs);
	return found;
}

/*
 * Start workers where they are wanted, within wxpay.max_workers; ask for a
 * place when databases wait.  Returns how long the launcher may sleep.
 */
static long
LauncherSchedule(TimestampTz now)
{
	WxpayDbEntry *es;
	long		timeout = LAUNCHER_SCAN_MS;
	int			running = 0;
	int			waiting = 0;
	bool		cand[WXPAY_MAX_DATABASES];

	es = wxpay_db_entries(true, NULL, NULL);
	for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
	{
		WxpayDbEntry *e = &es[i];
		bool		busy;
		bool		want;

		cand[i] = false;

		/* a worker started here that ended (or its database is gone) */
		if (Handles[i] != NULL)
		{
			pid_t		pid;

			if (HandleDb[i] != e->dboid ||
				GetBackgroundWorkerPid(Handles[i], &pid) == BGWH_STOPPED)
			{
				pfree(Handles[i]);
				Handles[i] = NULL;
				if (HandleDb[i] == e->dboid && e->starting)
				{
					/* it never took the entry */
					e->starting = false;
				}
			}
		}
		if (e->dboid == InvalidOid)
			continue;

		if (e->exit_pending)
		{
			if (e->exit_clean)
			{
				e->delay_ms = 0;
				e->retry_at = 0;
			}
			else
			{
				/* failed, killed, or its database went away: back off */
				if (e->exit_connected && !e->going)
					e->delay_ms = WORKER_RETRY_MIN_MS;
				else
					e->delay_ms = Min(Max(e->delay_ms * 2, WORKER_RETRY_MIN_MS),
									  WORKER_RETRY_MAX_MS);
				if (e->going)
					e->delay_ms = Max(e->delay_ms, WORKER_GOING_MS);
				e->retry_at = TimestampTzPlusMilliseconds(e->last_exit, e->delay_ms);
				/* what it had in flight waits for the next one */
				e->wake = true;
			}
			e->exit_pending = false;
			e->exit_clean = false;
			e->exit_connected = false;
			e->exit_idle = false;
		}
		if (e->going &&
			now >= TimestampTzPlusMilliseconds(e->going_since, WORKER_GOING_MS))
			e->going = false;
		if (e->stayed)
		{
			e->stayed = false;
			e->going = false;
			e->retry_at = 0;
			e->delay_ms = 0;
			if (e->ext == WXPAY_EXT_PRESENT)
				e->wake = true;
		}

		busy = e->worker_pid != 0 ||
			(e->starting &&
			 (Handles[i] != NULL ||
			  now < TimestampTzPlusMilliseconds(e->starting_since,
												WORKER_START_GRACE_MS)));
		if (!busy && e->starting)
			e->starting = false;
		if (busy)
		{
			running++;
			continue;
		}
		if (!e->servable || e->ext == WXPAY_EXT_ABSENT || e->going)
			continue;
		want = e->ext == WXPAY_EXT_UNKNOWN || e->wake || now >= e->next_due;
		if (!want)
		{
			timeout = Min(timeout, LauncherMsUntil(now, e->next_due));
			continue;
		}
		if (now < e->retry_at)
		{
			timeout = Min(timeout, LauncherMsUntil(now, e->retry_at));
			continue;
		}
		cand[i] = true;
		waiting++;
	}

	/* the longest waiting first */
	while (waiting > 0 && running < wxpay_max_workers && now >= ExhaustedUntil)
	{
		int			best = -1;

		for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
			if (cand[i] && (best < 0 || es[i].last_exit < es[best].last_exit))
				best = i;
		if (best < 0)
			break;
		cand[best] = false;
		waiting--;
		if (!LauncherStartWorker(best, &es[best]))
		{
			ExhaustedUntil = TimestampTzPlusMilliseconds(now, EXHAUSTED_RETRY_MS);
			cand[best] = true;
			waiting++;
			break;
		}
		running++;
	}
	/* why the others wait, for wxpay_queue_workers() */
	for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
		if (cand[i])
			es[i].no_slot = now < ExhaustedUntil;
	if (waiting > 0 && now < ExhaustedUntil)
		timeout = Min(timeout, LauncherMsUntil(now, ExhaustedUntil));

	/* some wait with every place taken: the longest-serving worker yields */
	if (waiting > 0 && running >= wxpay_max_workers)
	{
		int			oldest = -1;

		for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
		{
			if (es[i].dboid == InvalidOid || es[i].worker_pid == 0)
				continue;
			if (es[i].yield)
			{
				oldest = -1;	/* one at a time */
				break;
			}
			if (oldest < 0 || es[i].started_at < es[oldest].started_at)
				oldest = i;
		}
		if (oldest >= 0)
		{
			TimestampTz turn = TimestampTzPlusMilliseconds(es[oldest].started_at,
														   WORKER_TURN_MS);

			if (now >= turn)
			{
				es[oldest].yield = true;
				if (es[oldest].worker_latch)
					SetLatch(es[oldest].worker_latch);
			}
			else
				timeout = Min(timeout, LauncherMsUntil(now, turn));
		}
	}
	/* a worker started that has yet to take its entry */
	for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
		if (es[i].dboid != InvalidOid && es[i].starting && Handles[i] == NULL)
			timeout = Min(timeout, LauncherMsUntil(now,
												   TimestampTzPlusMilliseconds(es[i].starting_since,
																			   WORKER_START_GRACE_MS)));
	wxpay_db_entries_done();
	return timeout;
}

/*
 * Start the worker of entry i (lock held).  False when no background worker
 * slot is free: said once, until one could be started again.
 */
static bool
LauncherStartWorker(int i, WxpayDbEntry *e)
{
	BackgroundWorker bgw;
	BackgroundWorkerHandle *handle;

	wxpay_bgworker_init(&bgw, "wxpay_queue_worker_main", "wxpay_signplan worker",
						BGW_NEVER_RESTART);
#ifdef BGWORKER_INTERRUPTIBLE
	/* DROP/ALTER DATABASE and CREATE DATABASE ... TEMPLATE may end it */
	bgw.bgw_flags |= BGWORKER_INTERRUPTIBLE;
#endif
	bgw.bgw_main_arg = ObjectIdGetDatum(e->dboid);
	bgw.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&bgw, &handle))
	{
		if (!ExhaustedSaid)
			ereport(LOG,
					(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
					 errmsg("could not start a wxpay_signplan worker: max_worker_processes is exhausted"),
					 errdetail("The launcher tries again every %d s, and says so again only after a worker could be started.",
							   EXHAUSTED_RETRY_MS / 1000),
					 errhint("Raise max_worker_processes (each database with work needs one worker, up to wxpay.max_workers, beside the launcher), or lower wxpay.max_workers.")));
		else
			ereport(DEBUG1,
					(errmsg_internal("could not start a wxpay_signplan worker: max_worker_processes is still exhausted")));
		ExhaustedSaid = true;
		return false;
	}
	ExhaustedSaid = false;
	e->no_slot = false;
	Handles[i] = handle;
	HandleDb[i] = e->dboid;
	e->starting = true;
	e->starting_since = GetCurrentTimestamp();
	e->next_due = DT_NOEND;
	return true;
}

/*
 * wxpay_queue_workers(): the launcher and each database the launcher keeps
 * track of, with its worker or why none runs.  Copies the entries under the
 * lock, then builds the rows.
 *
 * The state texts follow one convention (doc/reference.md): a state word
 * ("running", "not running", "serving", "starting", "waiting", "idle",
 * "not served"), then, when there is one, a colon and the reason, in lower
 * case without a final period; the word alone is enough to filter on.
 */
#define WORKERS_COLS	7

PG_FUNCTION_INFO_V1(wxpay_queue_workers);
Datum
wxpay_queue_workers(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	WxpayDbEntry *copy;
	WxpayDbEntry *es;
	pid_t		launcher_pid = 0;
	TimestampTz now = GetCurrentTimestamp();
	Datum		values[WORKERS_COLS];
	bool		nulls[WORKERS_COLS];

	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != WORKERS_COLS)
		elog(ERROR, "unexpected result type of wxpay_queue_workers");
	if (!wxpay_worker_preloaded())
		PG_RETURN_VOID();

	copy = palloc(sizeof(WxpayDbEntry) * WXPAY_MAX_DATABASES);
	es = wxpay_db_entries(false, NULL, &launcher_pid);
	memcpy(copy, es, sizeof(WxpayDbEntry) * WXPAY_MAX_DATABASES);
	wxpay_db_entries_done();

	/* the launcher */
	memset(nulls, true, sizeof(nulls));
	values[2] = CStringGetTextDatum("wxpay_signplan launcher");
	nulls[2] = false;
	values[3] = Int32GetDatum((int32) launcher_pid);
	nulls[3] = launcher_pid == 0;
	values[4] = CStringGetTextDatum(launcher_pid != 0 ? "running" : "not running");
	nulls[4] = false;
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);

	for (int i = 0; i < WXPAY_MAX_DATABASES; i++)
	{
		WxpayDbEntry *e = &copy[i];
		char	   *name;
		const char *state;

		if (e->dboid == InvalidOid)
			continue;
		memset(nulls, true, sizeof(nulls));
		values[0] = ObjectIdGetDatum(e->dboid);
		nulls[0] = false;
		name = get_database_name(e->dboid);
		if (name != NULL)
		{
			NameData   *n = palloc(sizeof(NameData));

			namestrcpy(n, name);
			values[1] = NameGetDatum(n);
			nulls[1] = false;
		}
		values[2] = CStringGetTextDatum("wxpay_signplan worker");
		nulls[2] = false;
		if (e->worker_pid != 0)
		{
			values[3] = Int32GetDatum((int32) e->worker_pid);
			nulls[3] = false;
			values[5] = TimestampTzGetDatum(e->started_at);
			nulls[5] = false;
			state = e->yield ? "serving: giving its place to another database" : "serving";
		}
		else if (e->starting)
			state = "starting";
		else if (!e->servable)
			state = "not served: a template, no connections allowed, or not wxpay.database_name";
		else if (e->ext == WXPAY_EXT_ABSENT)
			state = "not served: the extension is not installed";
		else if (e->going)
			state = "not served: the database is being dropped, renamed or copied";
		else if (e->retry_at > now)
		{
			state = "waiting: its last worker failed";
			values[6] = TimestampTzGetDatum(e->retry_at);
			nulls[6] = false;
		}
		else if (e->ext == WXPAY_EXT_UNKNOWN || e->wake || e->next_due <= now)
			state = e->no_slot ? "waiting: max_worker_processes is exhausted" :
				"waiting: every place is taken (wxpay.max_workers)";
		else
		{
			state = "idle: nothing to do";
			if (e->next_due != DT_NOEND)
			{
				values[6] = TimestampTzGetDatum(e->next_due);
				nulls[6] = false;
			}
		}
		values[4] = CStringGetTextDatum(state);
		nulls[4] = false;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}
