/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: a background worker connected to no database that
 *	  starts the one queue worker and restarts it after failures.
 *
 * The postmaster starts the launcher (and restarts it 10 s after it dies).
 * The launcher starts the queue worker, a dynamic background worker, at
 * startup, whenever a backend asks for it (a committed enqueue), and again
 * after a failure with growing delays (1 s doubling to 5 min), so that a
 * worker that keeps failing never becomes a crash loop.  Before starting
 * one it looks up wxpay.database_name in pg_database: for a database that
 * does not exist it logs why no worker runs (3D000, once per look) and
 * looks again with the same growing delays, instead of starting a worker
 * that would die in a FATAL error while connecting.
 *
 * The launcher keeps no state that matters in its own memory: who serves
 * the queue and how the last worker ended live in shared memory
 * (shmem.c).  A restarted launcher therefore finds a running worker and
 * leaves it alone; a worker it started that finds the slot taken exits
 * before connecting.  A worker tells the launcher when it exits (its latch),
 * whoever started it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "libpq/pqsignal.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

#define WORKER_RETRY_MIN_MS		1000
#define WORKER_RETRY_MAX_MS		(300 * 1000)
#define WORKER_GOING_MS			(10 * 1000)
#define WORKER_START_GRACE_MS	(30 * 1000)

static bool LauncherDatabaseExists(void);
static void LauncherStartWorker(BackgroundWorkerHandle **handle);

void
wxpay_launcher_main(Datum arg)
{
	BackgroundWorkerHandle *handle = NULL;
	TimestampTz next_start = GetCurrentTimestamp();	/* serve at startup */
	long		delay_ms = WORKER_RETRY_MIN_MS;
	WxpayWorkerStatus st;
	bool		no_database = false;	/* the last look found none */

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
	wxpay_launcher_status(&st);
	if (st.pid != 0)
		ereport(LOG,
				(errmsg("wxpay_signplan launcher started; worker %d is already serving database \"%s\"",
						(int) st.pid, wxpay_database_name)));
	else
		ereport(LOG,
				(errmsg("wxpay_signplan launcher started")));
	/* whatever it said about the past, the next look starts afresh */
	st.wake = true;

	for (;;)
	{
		long		timeout = -1;
		bool		wake = st.wake;
		bool		running;
		bool		due;
		TimestampTz now;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		wxpay_launcher_status(&st);
		wake = wake || st.wake;
		now = GetCurrentTimestamp();

		/* a worker we started that ended before taking the slot */
		if (handle != NULL)
		{
			pid_t		pid;

			if (GetBackgroundWorkerPid(handle, &pid) == BGWH_STOPPED)
			{
				pfree(handle);
				handle = NULL;
				if (st.starting)
				{
					wxpay_launcher_set_starting(false);
					st.starting = false;
				}
			}
		}

		if (st.exited)
		{
			if (st.clean)
			{
				/* nothing to serve: wait to be asked */
				next_start = DT_NOEND;
				delay_ms = WORKER_RETRY_MIN_MS;
			}
			else
			{
				/* failed, killed, or its database went away: back off */
				if (st.connected && !st.going)
					delay_ms = WORKER_RETRY_MIN_MS;
				else
					delay_ms = Min(delay_ms * 2, WORKER_RETRY_MAX_MS);
				if (st.going && !st.stayed)
					delay_ms = Max(delay_ms, WORKER_GOING_MS);
				next_start = TimestampTzPlusMilliseconds(now, delay_ms);
			}
		}

		/*
		 * Someone serves, or is about to: a worker is in the slot, or one we
		 * (or a launcher before us) started has not reached it yet.
		 */
		running = st.pid != 0 ||
			(st.starting &&
			 (handle != NULL ||
			  now < TimestampTzPlusMilliseconds(st.starting_since,
												WORKER_START_GRACE_MS)));

		/*
		 * Start one when asked or when the delay is over.  A backend that
		 * asks while the database was missing is in it: no need to wait.
		 */
		due = !running &&
			((wake && (next_start == DT_NOEND || no_database)) ||
			 now >= next_start);
		if (due)
			no_database = !LauncherDatabaseExists();
		if (due && no_database)
		{
			/* nothing to connect to: say so, and look again later */
			ereport(LOG,
					(errcode(ERRCODE_UNDEFINED_DATABASE),
					 errmsg("wxpay_signplan worker not started: database \"%s\" does not exist",
							wxpay_database_name),
					 errdetail("wxpay.database_name names it.  The launcher looks again in %ld s.",
							   delay_ms / 1000),
					 errhint("Create that database and run CREATE EXTENSION wxpay_signplan in it, or set wxpay.database_name to the database where the extension is installed and restart the server.")));
			next_start = TimestampTzPlusMilliseconds(now, delay_ms);
			delay_ms = Min(delay_ms * 2, WORKER_RETRY_MAX_MS);
		}
		else if (due)
		{
			LauncherStartWorker(&handle);
			if (handle != NULL)
				next_start = DT_NOEND;
			else
			{
				/* no free worker slot: try again later */
				delay_ms = Min(delay_ms * 2, WORKER_RETRY_MAX_MS);
				next_start = TimestampTzPlusMilliseconds(now, delay_ms);
			}
		}

		if (next_start != DT_NOEND)
		{
			long		secs;
			int			usecs;

			TimestampDifference(GetCurrentTimestamp(), next_start, &secs, &usecs);
			timeout = secs * 1000 + usecs / 1000 + 1;
		}
		else if (st.starting && handle == NULL)
			timeout = WORKER_START_GRACE_MS;

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH |
						 (timeout >= 0 ? WL_TIMEOUT : 0),
						 timeout, wxpay_wait_event(WXPAY_WAIT_LAUNCHER));
		ResetLatch(MyLatch);
		st.wake = false;
	}
}

static void
LauncherStartWorker(BackgroundWorkerHandle **handle)
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

	wxpay_launcher_set_starting(true);
	if (!RegisterDynamicBackgroundWorker(&bgw, handle))
	{
		wxpay_launcher_set_starting(false);
		ereport(LOG,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the wxpay_signplan worker"),
				 errhint("Raise max_worker_processes.")));
		*handle = NULL;
	}
}

/*
 * Whether the database wxpay.database_name names exists: a worker started
 * for one that does not would only die in a FATAL error while connecting.
 * The launcher has no database, but pg_database is a shared catalog (read
 * the way the autovacuum launcher lists databases).
 */
static bool
LauncherDatabaseExists(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	/* a plain heap scan: without a database, no index can be opened */
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	pgstat_report_activity(STATE_RUNNING, "looking up wxpay.database_name");
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (!found &&
		   HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		found = strcmp(NameStr(db->datname), wxpay_database_name) == 0;
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return found;
}
