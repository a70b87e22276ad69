/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The outbox's SQL entry points: enqueue a stop in the caller's
 *	  transaction, and wait for its outcome.
 *
 * wxpay_stop_sign_plan_async() checks its arguments and the config exactly
 * as wxpay_stop_sign_plan() does, then inserts a row into
 * wxpay_stop_request through SPI, as the extension owner (SECURITY
 * DEFINER), in the caller's transaction.  Nothing else happens before
 * commit: a rolled-back transaction or savepoint takes the row with it, and
 * a prepared transaction keeps it invisible until COMMIT PREPARED.  The
 * function only marks the transaction; a transaction callback wakes the
 * worker once the commit is durable (worker.c).
 *
 * wxpay_wait_stop_request() reads the row under the latest snapshot, so it
 * sees the worker's commits even inside a REPEATABLE READ transaction, and
 * sleeps on a condition variable that the worker broadcasts after each
 * batch of outcomes commits.  Cancel and statement_timeout interrupt the
 * sleep.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

/* local state */
static bool CallbackRegistered = false;
static bool WakeAtCommit = false;

static void QueueXactCallback(XactEvent event, void *arg);
static void QueueRequireWorker(const char *funcname);
static char *QueueTable(FunctionCallInfo fcinfo);

static void
QueueXactCallback(XactEvent event, void *arg)
{
	(void) arg;
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (WakeAtCommit)
			{
				WakeAtCommit = false;
				wxpay_worker_wake();
			}
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			/* nothing to send (yet): COMMIT PREPARED wakes the worker */
			WakeAtCommit = false;
			break;
		default:
			break;
	}
}

/*
 * Wake the worker when the current transaction commits (and only then).
 * A no-op without the preloaded worker.
 */
void
wxpay_queue_wake_at_commit(void)
{
	if (!wxpay_worker_preloaded())
		return;
	if (!CallbackRegistered)
	{
		RegisterXactCallback(QueueXactCallback, NULL);
		CallbackRegistered = true;
	}
	WakeAtCommit = true;
}

/* The queue is served only with the worker, and only in its database. */
static void
QueueRequireWorker(const char *funcname)
{
	char	   *dbname;

	if (!wxpay_worker_preloaded())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires the wxpay_signplan background worker", funcname),
				 errdetail("wxpay_signplan is not in shared_preload_libraries, so no worker would ever send the request."),
				 errhint("Add wxpay_signplan to shared_preload_libraries, set wxpay.database_name, and restart the server.")));

	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || wxpay_database_name == NULL ||
		strcmp(dbname, wxpay_database_name) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the wxpay_signplan background worker does not serve database \"%s\"",
						dbname ? dbname : "?"),
				 errdetail("wxpay.database_name is \"%s\".",
						   wxpay_database_name ? wxpay_database_name : ""),
				 errhint("Queue stop requests in that database, or change wxpay.database_name and restart the server.")));
}

/* The queue table, qualified by the called function's schema. */
static char *
QueueTable(FunctionCallInfo fcinfo)
{
	Oid			nspoid = get_func_namespace(fcinfo->flinfo->fn_oid);

	return psprintf("%s.wxpay_stop_request", wxpay_schema_quoted(nspoid));
}

PG_FUNCTION_INFO_V1(wxpay_stop_sign_plan_async);
Datum
wxpay_stop_sign_plan_async(PG_FUNCTION_ARGS)
{
	char	   *plan_no;
	char	   *sub_mchid;
	char	   *sql;
	bool		isnull;
	Datum		id;

	QueueRequireWorker("wxpay_stop_sign_plan_async()");

	/* the same checks as the synchronous function, before anything else */
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("merchant_sign_plan_no must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stop_reason must not be null")));
	plan_no = text_to_cstring(PG_GETARG_TEXT_PP(0));
	wxpay_check_plan_no_arg(plan_no);
	(void) wxpay_check_stop_reason_arg(PG_GETARG_TEXT_PP(1));
	sub_mchid = wxpay_sub_mchid_arg(fcinfo, 3);
	(void) wxpay_resolve_config(fcinfo, 2);

	/*
	 * sub_mchid is named only when set: an install not yet updated to 0.3.0
	 * (no such column) keeps queueing direct-merchant stops.
	 */
	sql = psprintf("INSERT INTO %s (config_name, merchant_sign_plan_no, stop_reason%s)"
				   " VALUES ($1, $2, $3%s) RETURNING id", QueueTable(fcinfo),
				   sub_mchid ? ", sub_mchid" : "", sub_mchid ? ", $4" : "");

	wxpay_spi_connect();
	if (SPI_execute_with_args(sql, sub_mchid ? 4 : 3,
							  (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID},
							  (Datum[]) {PG_GETARG_DATUM(2), PG_GETARG_DATUM(0),
							  PG_GETARG_DATUM(1),
							  sub_mchid ? CStringGetTextDatum(sub_mchid) : (Datum) 0},
							  NULL, false, 1) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not queue the stop request");
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	SPI_finish();

	wxpay_queue_wake_at_commit();

	PG_RETURN_DATUM(id);
}

PG_FUNCTION_INFO_V1(wxpay_wait_stop_request);
Datum
wxpay_wait_stop_request(PG_FUNCTION_ARGS)
{
	int64		id;
	Interval   *timeout;
	TimestampTz start;
	TimestampTz deadline;
	SPIPlanPtr	plan;
	char	   *sql;
	Datum		result = (Datum) 0;

	QueueRequireWorker("wxpay_wait_stop_request()");

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("id must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("timeout must not be null")));
	id = PG_GETARG_INT64(0);
	timeout = PG_GETARG_INTERVAL_P(1);
	start = GetCurrentTimestamp();
	deadline = DatumGetTimestampTz(DirectFunctionCall2(timestamptz_pl_interval,
													   TimestampTzGetDatum(start),
													   IntervalPGetDatum(timeout)));
	if (deadline < start)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));

	sql = psprintf("SELECT q, q.xmin, q.state IN ('succeeded', 'failed')"
				   " FROM %s q WHERE q.id = $1", QueueTable(fcinfo));

	wxpay_spi_connect();
	plan = SPI_prepare(sql, 1, (Oid[]) {INT8OID});
	if (plan == NULL)
		elog(ERROR, "could not prepare: %s", SPI_result_code_string(SPI_result));

	for (;;)
	{
		Datum		arg = Int64GetDatum(id);
		bool		isnull;
		TransactionId xmin;
		bool		finished;
		long		secs;
		int			usecs;

		wxpay_worker_prepare_wait();

		/* the latest committed state, whatever the isolation level */
		if (SPI_execute_snapshot(plan, &arg, NULL, GetLatestSnapshot(),
								 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read stop request %lld", (long long) id);
		if (SPI_processed == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("stop request %lld does not exist", (long long) id),
					 errhint("A request queued by a transaction that has not committed is not visible yet.")));

		xmin = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[0],
												   SPI_tuptable->tupdesc, 2, &isnull));
		if (TransactionIdIsCurrentTransactionId(xmin))
			ereport(ERROR,
					(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
					 errmsg("cannot wait for stop request %lld in the transaction that queued it", (long long) id),
					 errdetail("The request is sent only after this transaction commits."),
					 errhint("Commit first, then wait in a new transaction.")));

		finished = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 3, &isnull));
		TimestampDifference(GetCurrentTimestamp(), deadline, &secs, &usecs);
		if (finished || (secs == 0 && usecs == 0))
		{
			/* the row, copied out of SPI's memory */
			result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
			result = SPI_datumTransfer(result, false, -1);
			break;
		}
		SPI_freetuptable(SPI_tuptable);

		/* until the worker commits outcomes, or the timeout */
		wxpay_worker_wait_finished(secs * 1000 + (usecs + 999) / 1000);
		CHECK_FOR_INTERRUPTS();
	}
	wxpay_worker_cancel_wait();
	SPI_finish();

	PG_RETURN_DATUM(result);
}
