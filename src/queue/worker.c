/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  The queue worker: one background process per database with work,
 *	  serving that database's wxpay_stop_request.
 *
 * The launcher (launcher.c) starts it for one database (its OID is the
 * worker's argument).  Before it connects to that database it takes the
 * database's entry (shmem.c); if a live worker holds it, it exits at once,
 * so there is never more than one per database.  When it finds no
 * extension there it exits cleanly, and the entry remembers it, so that no
 * worker connects there again until a backend of that database asks (with
 * wxpay.database_name set, it says so in one LOG line, 42704, with the
 * CREATE EXTENSION hint).
 *
 * It leaves when its database has had nothing to do for
 * wxpay.worker_idle_timeout, telling the launcher when its next request or
 * certificate refresh is due; and when the launcher wants its place for
 * another database, once what it has in flight is done.  Either way,
 * nothing is lost: the queue is in the table, and the next worker
 * reconciles what was left in "sending" before it sends anything.
 *
 * The extension dropped under it (DROP EXTENSION, which dropguard.c allows
 * only with nothing queued or in flight, wakes it at commit): the worker
 * says so in one plain LOG line and exits cleanly.  When the drop commits
 * while a run is under way, the run's next statement fails on a table or
 * type that no longer exists; the error handler first looks whether the
 * extension it served is still there, and if not, that error is not worth
 * reporting (a raw "relation ... does not exist" with the worker's internal
 * query): the same plain line is.
 *
 * The loop: a short transaction finds the extension, and the first time
 * (and after an error) reconciles rows left in "sending" (queue.c); then
 * the pipeline (pipeline.c) serves the queue until nothing is due and
 * nothing is in flight; then the worker sleeps on its latch until the next
 * due request, a wakeup, or a minute.
 *
 * Errors.  An error in the loop is handled like PostgreSQL's own auxiliary
 * processes do (sigsetjmp): logged, the transaction aborted, the pipeline
 * abandoned (wxpay_pipeline_abandon: decided outcomes recorded, requests
 * claimed but not sent released as they were), the loop's memory freed, and
 * after a pause the worker goes on, reconciling what was in flight.  A
 * cancel (pg_cancel_backend) is such an error: it marks nothing failed.
 * SIGTERM exits, as for any backend; rows in flight are then reconciled by
 * the next worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "libpq/pqsignal.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

#define WORKER_MAX_SLEEP_MS		(60 * 1000)
#define WORKER_ERROR_PAUSE_MS	1000
/* an idle worker's database is looked at again after this at the latest */
#define WORKER_RECHECK_MS		(10 * 60 * 1000)

/* local state */
static bool NeedReconcile = true;
/* the other database whose queue this is, if this database is a copy */
static Oid	ForeignHome = InvalidOid;
static Oid	ServedExtension = InvalidOid;	/* pg_extension row served */
static TimestampTz LastBusy = 0;	/* when the database last had work */

static Oid	WorkerPrepare(void);
static Oid	WorkerExtensionNow(void);
WXPAY_NORETURN static void WorkerStops(Oid ext);
static void WorkerErrorPause(void);

void
wxpay_queue_worker_main(Datum arg)
{
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext cxt;
	Oid			dboid = DatumGetObjectId(arg);
	char	   *dbname;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/* one worker per database: before connecting, so a second never shows */
	if (!wxpay_worker_slot_take(dboid))
	{
		ereport(LOG,
				(errmsg("wxpay_signplan worker %d exits: another worker is serving the queue of database %u",
						(int) MyProcPid, dboid)));
		proc_exit(0);
	}

	/* its OID until its name is known (a FATAL error while connecting) */
	wxpay_worker_set_database(psprintf("%u", dboid));

	/* nothing of ALTER DATABASE/ROLE ... SET changes what it runs */
	wxpay_pinned_prepare();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	wxpay_pinned_apply();
	pgstat_report_appname("wxpay_signplan worker");
	StartTransactionCommand();
	dbname = get_database_name(MyDatabaseId);
	wxpay_worker_set_database(dbname ? dbname : "?");
	CommitTransactionCommand();
	wxpay_worker_slot_report(true, false, WXPAY_EXT_UNKNOWN);
	ereport(LOG,
			(errmsg("wxpay_signplan worker %d started serving database \"%s\"",
					(int) MyProcPid, wxpay_worker_database())));
	LastBusy = GetCurrentTimestamp();

	cxt = AllocSetContextCreate(TopMemoryContext, "wxpay worker loop",
								ALLOCSET_DEFAULT_SIZES);

	/* an error in the loop is logged and the worker goes on */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		static bool recovering = false;
		static bool checking = false;

		error_context_stack = NULL;
		HOLD_INTERRUPTS();
		AbortOutOfAnyTransaction();

		/*
		 * The extension dropped under the run: one plain line instead of
		 * the error.  Not when the look itself failed (it then reports).
		 */
		if (!checking && OidIsValid(ServedExtension))
		{
			Oid			ext;

			checking = true;
			ext = WorkerExtensionNow();
			checking = false;
			if (ext != ServedExtension)
			{
				FlushErrorState();
				WorkerStops(ext);
			}
		}
		checking = false;
		EmitErrorReport();
		MemoryContextSwitchTo(TopMemoryContext);
		FlushErrorState();
		NeedReconcile = true;

		/* what the pipeline holds: once, and not if that fails too */
		if (!recovering)
		{
			recovering = true;
			RESUME_INTERRUPTS();
			wxpay_pipeline_abandon();
			HOLD_INTERRUPTS();
		}
		recovering = false;
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(cxt);
		RESUME_INTERRUPTS();

		WorkerErrorPause();
	}
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		long		sleep_ms = WORKER_MAX_SLEEP_MS;
		Oid			nspoid;
		bool		woken;
		TimestampTz now;
		TimestampTz next_work;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		ResetLatch(MyLatch);
		woken = wxpay_worker_take_wake();

		MemoryContextSwitchTo(cxt);
		nspoid = WorkerPrepare();
		if (OidIsValid(ForeignHome))
		{
			/*
			 * Another database's queue (a copy): say so and wait to be asked
			 * (wxpay_adopt_stop_requests wakes this database).
			 */
			wxpay_queue_home_error(WARNING, wxpay_worker_database(), ForeignHome);
			wxpay_worker_slot_report(true, true, WXPAY_EXT_ABSENT);
			proc_exit(0);
		}
		if (!OidIsValid(nspoid))
		{
			if (OidIsValid(ServedExtension))
				WorkerStops(InvalidOid);
			/* the extension is not installed here: wait to be asked */
			if (wxpay_database_name != NULL && wxpay_database_name[0] != '\0')
				ereport(LOG,
						(errcode(ERRCODE_UNDEFINED_OBJECT),
						 errmsg("wxpay_signplan worker stops: the extension is not installed in database \"%s\"",
								wxpay_worker_database()),
						 errdetail("wxpay.database_name names the database whose queue the worker serves."),
						 errhint("Run CREATE EXTENSION wxpay_signplan in database \"%s\", or set wxpay.database_name to the database where it is installed and restart the server.",
								 wxpay_worker_database())));
			else
				ereport(DEBUG1,
						(errmsg_internal("wxpay_signplan worker stops: the extension is not installed in database \"%s\"",
										 wxpay_worker_database())));
			wxpay_worker_slot_report(true, true, WXPAY_EXT_ABSENT);
			proc_exit(0);
		}
		wxpay_worker_slot_report(true, false, WXPAY_EXT_PRESENT);
		if (wxpay_pipeline_run(nspoid, cxt, &sleep_ms) > 0 || woken)
			LastBusy = GetCurrentTimestamp();
		MemoryContextSwitchTo(TopMemoryContext);
		MemoryContextReset(cxt);

		/* another database waits for this place: give it */
		if (wxpay_worker_yield_wanted() && wxpay_worker_leave(0, true))
		{
			ereport(DEBUG1,
					(errmsg_internal("wxpay_signplan worker gives its place to another database")));
			proc_exit(0);
		}

		/* nothing to do for a while: leave, saying when work is due */
		now = GetCurrentTimestamp();
		if (wxpay_worker_idle_timeout > 0 &&
			now >= TimestampTzPlusMilliseconds(LastBusy,
											   wxpay_worker_idle_timeout * 1000L))
		{
			next_work = Min(wxpay_pipeline_next_work(),
							TimestampTzPlusMilliseconds(now, WORKER_RECHECK_MS));
			if (next_work > TimestampTzPlusMilliseconds(now,
														wxpay_worker_idle_timeout * 1000L) &&
				wxpay_worker_leave(next_work, false))
				proc_exit(0);
		}
		else if (wxpay_worker_idle_timeout > 0)
		{
			long		secs;
			int			usecs;

			TimestampDifference(now,
								TimestampTzPlusMilliseconds(LastBusy,
															wxpay_worker_idle_timeout * 1000L),
								&secs, &usecs);
			sleep_ms = Min(sleep_ms, secs * 1000 + usecs / 1000 + 1);
		}

		pgstat_report_activity(STATE_IDLE, NULL);
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 Max(sleep_ms, 1),
						 wxpay_wait_event(WXPAY_WAIT_QUEUE_WAKEUP));
	}
}

/*
 * A short transaction: the extension's schema (InvalidOid when it is not
 * installed), and rows left in "sending" reconciled when needed.
 */
static Oid
WorkerPrepare(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	Oid			nspoid;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	wxpay_spi_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, "looking for due stop requests");
	MemoryContextSwitchTo(cxt);

	nspoid = wxpay_queue_schema();
	if (OidIsValid(nspoid))
	{
		Oid			ext = get_extension_oid("wxpay_signplan", true);

		/* dropped and created again since the last run: a fresh worker */
		if (OidIsValid(ServedExtension) && ext != ServedExtension)
			WorkerStops(ext);
		ServedExtension = ext;
	}
	/* a copy of another database's queue: nothing of it is touched */
	ForeignHome = OidIsValid(nspoid) ? wxpay_queue_home_other(nspoid) : InvalidOid;
	if (OidIsValid(ForeignHome))
		nspoid = InvalidOid;
	if (OidIsValid(nspoid) && NeedReconcile)
	{
		wxpay_queue_reconcile(wxpay_queue_table(nspoid));
		NeedReconcile = false;
	}

	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	if (OidIsValid(nspoid))
		wxpay_worker_broadcast_finished();
	return nspoid;
}

/*
 * The extension installed now (InvalidOid: none).  Runs in the error
 * handler, after the failed transaction was aborted.
 */
static Oid
WorkerExtensionNow(void)
{
	Oid			ext;

	StartTransactionCommand();
	ext = get_extension_oid("wxpay_signplan", true);
	CommitTransactionCommand();
	return ext;
}

/*
 * The extension served is gone: say so in one plain line and exit.  When it
 * was dropped and created again (ext), the launcher starts a fresh worker
 * for the new one at once: nothing of the old one's run may touch the new
 * queue, whose ids start again at 1.  Otherwise wait to be asked.
 */
static void
WorkerStops(Oid ext)
{
	if (OidIsValid(ext))
	{
		ereport(LOG,
				(errmsg("wxpay_signplan worker restarts: the extension was dropped and created again in database \"%s\"",
						wxpay_worker_database())));
		(void) wxpay_worker_leave(0, true);
	}
	else
	{
		ereport(LOG,
				(errmsg("wxpay_signplan worker stops: the extension is no longer installed in database \"%s\"",
						wxpay_worker_database())));
		wxpay_worker_slot_report(true, true, WXPAY_EXT_ABSENT);
	}
	proc_exit(0);
}

/*
 * A second's pause after an error, so that a persistent one is not logged
 * in a tight loop.  Interrupts are served meanwhile: a SIGTERM (a fast
 * shutdown, pg_terminate_backend, DROP DATABASE asking the worker to step
 * aside) ends the worker at once instead of after the pause; wakeups that
 * come meanwhile are not lost (the loop reads them from shared memory).
 */
static void
WorkerErrorPause(void)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													WORKER_ERROR_PAUSE_MS);

	pgstat_report_activity(STATE_IDLE, NULL);
	for (;;)
	{
		long		secs;
		int			usecs;

		CHECK_FOR_INTERRUPTS();
		TimestampDifference(GetCurrentTimestamp(), until, &secs, &usecs);
		if (secs <= 0 && usecs <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 secs * 1000 + usecs / 1000 + 1,
						 wxpay_wait_event(WXPAY_WAIT_ERROR_PAUSE));
		ResetLatch(MyLatch);
	}
}
