/*-------------------------------------------------------------------------
 *
 * queue.c
 *	  The one owner of wxpay_stop_request: every statement on the queue
 *	  table is here (enqueue, wait, claim, record, release, reconcile,
 *	  purge), and so is the state machine those statements keep.
 *
 * The state machine of one request:
 *
 *	  (enqueue) --> queued --claim--> sending --record--> succeeded
 *					  ^ ^				 |  |		  \--> failed
 *					  | \--release------/  |
 *					  \------retry/reconcile/
 *
 *	  queued	due at next_attempt_at.  Moved only by the worker's claim.
 *	  sending	claimed by the (one) queue worker for an attempt.  Moved
 *				only by that worker: record (the attempt's outcome),
 *				release (claimed, but nothing was sent), or reconcile (the
 *				worker that claimed it is gone: at the next worker's start,
 *				or after an error in the worker).
 *	  succeeded, failed
 *				final; only purge deletes them.
 *
 * The unknown mark (outcome_unknown): "a stop of this request may have
 * reached WeChat Pay".  The claim sets it, in the same transaction that
 * moves the row to sending and counts the attempt, and that transaction
 * commits with synchronous_commit = on, so the mark is flushed to disk (and
 * to synchronous standbys) before the worker sends anything; the worker
 * checks that the standbys confirmed it, since a cancel of the commit's wait
 * leaves it local (pipeline.c).  An attempt whose row has the mark queries
 * the plan before any stop.  Only the worker's record clears it, and only
 * with a success: a verified 2xx to a
 * stop, or a query that shows the plan stopped by the merchant.  A query
 * that shows the plan still running lets the stop follow but keeps the
 * mark: the earlier stop may yet be applied after that answer, so a refusal
 * of that stop decides nothing either (a row that had the mark ends
 * succeeded, or failed with WX003 when attempts run out).  A stop that
 * never left (WX004) or was refused with 429 leaves the mark as it was.
 * Release restores the mark the row had before the claim (as the claim
 * read it: with the timeline rule below).  Reconcile keeps it.  Nothing
 * derives it from error codes.
 *
 * Promotions: the timeline rule.  A standby promoted after an asynchronous
 * primary died may lack the primary's last commits: claims (with their
 * marks) and outcomes of stops that did leave.  Such a row comes back
 * queued and unmarked, and a plain claim would stop its plan a second time,
 * blindly, and record WeChat Pay's "already stopped" refusal as failed.  So
 * each row records the timeline its enqueue or its last claim was written
 * on (column timeline, from GetWALInsertionTimeLine()), and the claim treats
 * a row whose timeline is not the current one, or is NULL (rows from before
 * 0.4.0, rows inserted by hand), as marked: it queries before any stop.
 * PostgreSQL starts a new timeline at every promotion and at the end of
 * every archive recovery (a restored base backup, point-in-time recovery).
 * Within one timeline a claim is never lost once committed (it is flushed
 * before anything is sent), so a row written on the current timeline shows
 * every claim of it.  (A copy of the data directory started without archive
 * recovery, such as a file-system snapshot, keeps its timeline: doc/operations.md.)
 * The cost is one query for each unfinished request after a promotion.  A
 * claim records the current timeline; release, record and reconcile leave
 * it (they run on the timeline of the claim, or carry the mark anyway).
 * What replication cannot give back, no rule here can: an enqueue committed
 * on an asynchronous primary and lost with it was sent or not, and the new
 * primary has no row for it at all (doc/operations.md,
 * "Backups, replicas and failover").
 *
 * "Sent iff commit".  The enqueue inserts in the caller's transaction;
 * nothing happens before it commits.  Because the claim's commit record
 * follows the enqueue's commit record in the WAL and is flushed (and
 * replicated, with synchronous standbys) before anything is sent, an
 * enqueue committed with synchronous_commit = off that is lost in a crash
 * or a failover to a synchronous standby was never sent either.  (A
 * failover to an asynchronous standby may lose any commit, sent or not:
 * see the timeline rule above.)
 *
 * wxpay_stop_sign_plan_async() checks its arguments and the config exactly
 * as wxpay_stop_sign_plan() does, then inserts a row through SPI, as the
 * extension owner (SECURITY DEFINER), in the caller's transaction, and asks
 * shmem.c to wake the worker once that transaction commits.
 *
 * Who may see a request.  The enqueue records the role that queued it
 * (enqueued_by: the role its session acts as, see QueueCaller); the wait
 * returns a request only to a role that may read the whole queue table or
 * has the privileges of that role.  To anyone else the request does not
 * exist, in the words of a missing id, so that an id reveals nothing.
 *
 * wxpay_wait_stop_request() reads the row under the latest snapshot, so it
 * sees the worker's commits even inside a REPEATABLE READ transaction, and
 * sleeps on a condition variable that the worker broadcasts after each
 * group of outcomes commits.  Cancel and statement_timeout interrupt the
 * sleep; any timeout (clamped to what one sleep can take) is slept in
 * pieces.
 *
 * The worker's statements run in transactions the worker opens, with SPI
 * connected; they never wait for the network.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

/* settings (defined in QueueInit) */
int			wxpay_max_attempts = 10;
int			wxpay_reconcile_delay = 10000;	/* ms */
int			wxpay_stop_request_retention = 0;	/* s, 0 = keep */

/*
 * "The row is still in sending", for statements that find their rows by id.
 * Compared in the "C" collation (the same equality for this ASCII word) so
 * that the condition does not imply the partial indexes' predicates: the
 * planner then always finds the rows through the primary key.  With the
 * plain condition, a plan made while the table's statistics still show a
 * small queue can scan the whole due index for each id (its second column),
 * which made every recorded outcome cost as much as the backlog is long.
 */
#define QUEUE_BY_ID_SENDING(alias) alias "state COLLATE pg_catalog.\"C\" OPERATOR(pg_catalog.=) 'sending'"

/*
 * A statement on the queue table, prepared once per table name and kept
 * (SPI_keepplan) across transactions: the worker runs the same few
 * statements thousands of times, and a session its enqueues (a trigger,
 * one per deleted row).  slot remembers the plan and its table.
 */
typedef struct QueuePlan
{
	char	   *q;
	SPIPlanPtr	plan;
} QueuePlan;

static void QueueRequireWorker(const char *funcname);
static bool QueueHasTimeline(Oid relid);
static char *QueueTable(FunctionCallInfo fcinfo);
static Oid	QueueTableOid(FunctionCallInfo fcinfo, bool *has_enqueuer);
static Oid	QueueCaller(void);
static bool QueueIsEnqueuer(Oid caller, SPITupleTable *tab);
static int	QueueExec(const char *sql, int nargs, Oid *types, Datum *values,
					  bool read_only);
static SPIPlanPtr QueuePrepare(QueuePlan *slot, const char *q, const char *fmt,
							   int nargs, Oid *types, int cursor_options);
static int	QueueExecPlan(SPIPlanPtr plan, Datum *values, const char *nulls,
						  bool read_only);
static void QueueAdoptHome(Oid nspoid);
static void QueueRequeue(const char *q, WxpayQueueRow **rows, int n, int delay_ms);

/*
 * The queue is served only with the worker; with the deprecated
 * wxpay.database_name set, only in that database.
 */
static void
QueueRequireWorker(const char *funcname)
{
	char	   *dbname;

	if (!wxpay_worker_preloaded())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s requires the wxpay_signplan background worker", funcname),
				 errdetail("wxpay_signplan is not in shared_preload_libraries, so no worker would ever send the request."),
				 errhint("Add wxpay_signplan to shared_preload_libraries and restart the server.")));

	if (wxpay_database_name == NULL || wxpay_database_name[0] == '\0')
		return;
	dbname = get_database_name(MyDatabaseId);
	if (dbname == NULL || strcmp(dbname, wxpay_database_name) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the wxpay_signplan background worker does not serve database \"%s\"",
						dbname ? dbname : "?"),
				 errdetail("wxpay.database_name is \"%s\": only that database is served.",
						   wxpay_database_name),
				 errhint("Queue stop requests in that database, or remove the deprecated wxpay.database_name and restart the server to serve every database.")));
}

/*
 * Whether the queue table has the timeline column (0.4.0): the library may
 * be newer than the installed extension until ALTER EXTENSION ... UPDATE.
 */
static bool
QueueHasTimeline(Oid relid)
{
	return OidIsValid(relid) && get_attnum(relid, "timeline") != InvalidAttrNumber;
}

/* The queue table, qualified by the called function's schema. */
static char *
QueueTable(FunctionCallInfo fcinfo)
{
	Oid			nspoid = get_func_namespace(fcinfo->flinfo->fn_oid);

	return psprintf("%s.wxpay_stop_request", wxpay_schema_quoted(nspoid));
}

/*
 * The queue table's OID; *has_enqueuer: it has the column enqueued_by (an
 * install not yet updated to 0.4.0 has not).
 */
static Oid
QueueTableOid(FunctionCallInfo fcinfo, bool *has_enqueuer)
{
	Oid			relid;

	relid = get_relname_relid("wxpay_stop_request",
							  get_func_namespace(fcinfo->flinfo->fn_oid));
	if (!OidIsValid(relid))
		elog(ERROR, "table wxpay_stop_request is missing");
	*has_enqueuer = get_attnum(relid, "enqueued_by") != InvalidAttrNumber;
	return relid;
}

/*
 * The role that calls, as it acts: the role SET ROLE chose (or the session
 * user).  Inside our SECURITY DEFINER functions the current user is the
 * extension's owner, so GetUserId() cannot tell; the outer user is what
 * the caller's session acts as.  A SECURITY DEFINER function of the
 * application that calls ours therefore counts as its caller, not as its
 * owner, both when it queues and when it waits.
 */
static Oid
QueueCaller(void)
{
	return GetOuterUserId();
}

/*
 * Whether caller queued the request read into tab (its fourth column is
 * enqueued_by), or has the privileges of the role that did.  A request
 * without an enqueuer (queued before 0.4.0) belongs to nobody.
 */
static bool
QueueIsEnqueuer(Oid caller, SPITupleTable *tab)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tab->vals[0], tab->tupdesc, 4, &isnull);

	return !isnull && has_privs_of_role(caller, DatumGetObjectId(d));
}

PG_FUNCTION_INFO_V1(wxpay_stop_sign_plan_async);
Datum
wxpay_stop_sign_plan_async(PG_FUNCTION_ARGS)
{
	static QueuePlan insert_slot;
	static QueuePlan insert_old_slot;
	static QueuePlan insert_old_sub_slot;
	char	   *plan_no;
	char	   *sub_mchid;
	char	   *q;
	SPIPlanPtr	plan;
	bool		isnull;
	Datum		id;
	Oid			relid;
	bool		has_enqueuer;
	bool		current;

	QueueRequireWorker("wxpay_stop_sign_plan_async()");
	{
		Oid			other;

		wxpay_spi_connect();
		other = wxpay_queue_home_other(get_func_namespace(fcinfo->flinfo->fn_oid));
		SPI_finish();
		if (OidIsValid(other))
			wxpay_queue_home_error(ERROR, get_database_name(MyDatabaseId), other);
	}

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
	/* a standby cannot queue (and has no WAL insertion timeline) */
	PreventCommandDuringRecovery("wxpay_stop_sign_plan_async()");

	/*
	 * An install updated to 0.4.0 records the caller (enqueued_by, so that
	 * it may wait for its request) and the timeline the row is written on
	 * (the timeline rule at the top of the file).  One not yet updated has
	 * neither column, and one not yet updated to 0.3.0 no sub_mchid either:
	 * there sub_mchid is named only when set, so direct-merchant stops keep
	 * being queued.
	 */
	relid = QueueTableOid(fcinfo, &has_enqueuer);
	current = has_enqueuer && QueueHasTimeline(relid);
	q = QueueTable(fcinfo);

	/* prepared once per table and kept: a trigger enqueues once per row */
	wxpay_spi_connect();
	if (current)
		plan = QueuePrepare(&insert_slot, q,
							"INSERT INTO %s (config_name, merchant_sign_plan_no, stop_reason,"
							" sub_mchid, enqueued_by, timeline)"
							" VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
							6, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID, OIDOID, INT4OID}, 0);
	else if (sub_mchid)
		plan = QueuePrepare(&insert_old_sub_slot, q,
							"INSERT INTO %s (config_name, merchant_sign_plan_no, stop_reason,"
							" sub_mchid) VALUES ($1, $2, $3, $4) RETURNING id",
							4, (Oid[]) {TEXTOID, TEXTOID, TEXTOID, TEXTOID}, 0);
	else
		plan = QueuePrepare(&insert_old_slot, q,
							"INSERT INTO %s (config_name, merchant_sign_plan_no, stop_reason)"
							" VALUES ($1, $2, $3) RETURNING id",
							3, (Oid[]) {TEXTOID, TEXTOID, TEXTOID}, 0);
	if (QueueExecPlan(plan, (Datum[]) {PG_GETARG_DATUM(2), PG_GETARG_DATUM(0),
						  PG_GETARG_DATUM(1),
						  sub_mchid ? CStringGetTextDatum(sub_mchid) : (Datum) 0,
						  ObjectIdGetDatum(QueueCaller()),
						  Int32GetDatum((int32) GetWALInsertionTimeLine())},
					  sub_mchid ? NULL : "   n  ", false) != SPI_OK_INSERT_RETURNING ||
		SPI_processed != 1)
		elog(ERROR, "could not queue the stop request");
	id = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	SPI_finish();

	wxpay_worker_wake_at_commit(WXPAY_WAKE_QUEUE);

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
	Oid			relid;
	bool		has_enqueuer;
	Oid			caller = QueueCaller();
	bool		reader;

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

	/*
	 * Only a role that may read the whole table, or that queued the request
	 * (or has its privileges), gets the row; to anyone else it does not
	 * exist, in the same words as a missing id.
	 */
	relid = QueueTableOid(fcinfo, &has_enqueuer);
	reader = pg_class_aclcheck(relid, caller, ACL_SELECT) == ACLCHECK_OK ||
		pg_attribute_aclcheck_all(relid, caller, ACL_SELECT,
								  ACLMASK_ALL) == ACLCHECK_OK;

	sql = psprintf("SELECT q, q.xmin, q.state OPERATOR(pg_catalog.=) ANY"
				   " (ARRAY['succeeded', 'failed']::pg_catalog.text[]), %s"
				   " FROM %s q WHERE q.id OPERATOR(pg_catalog.=) $1",
				   has_enqueuer ? "q.enqueued_by" : "NULL::pg_catalog.oid",
				   QueueTable(fcinfo));

	wxpay_spi_connect();
	plan = SPI_prepare(sql, 1, (Oid[]) {INT8OID});
	if (plan == NULL)
		wxpay_spi_error("SPI_prepare", SPI_result);

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
		if (SPI_processed == 0 ||
			(!reader && !QueueIsEnqueuer(caller, SPI_tuptable)))
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

		/*
		 * until the worker commits outcomes, or the timeout: a long timeout
		 * in pieces that one wait can take (then the row is read again)
		 */
		if (secs >= INT_MAX / 1000)
			wxpay_worker_wait_finished((long) INT_MAX / 1000 * 1000);
		else
			wxpay_worker_wait_finished(secs * 1000 + (usecs + 999) / 1000);
		CHECK_FOR_INTERRUPTS();
	}
	wxpay_worker_cancel_wait();
	SPI_finish();

	PG_RETURN_DATUM(result);
}

/* ----------------------------------------------------------------
 *		The worker's statements: in a transaction, SPI connected
 * ----------------------------------------------------------------
 */

/*
 * SPI_execute_with_args, then back to the caller's memory context: SPI
 * leaves its own procedure context current.
 */
static int
QueueExec(const char *sql, int nargs, Oid *types, Datum *values,
		  bool read_only)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			ret = SPI_execute_with_args(sql, nargs, types, values, NULL,
											read_only, 0);

	MemoryContextSwitchTo(cxt);
	return ret;
}

/*
 * Defines the settings of the queue's state machine.
 */
void
QueueInit(void)
{
	DefineCustomIntVariable("wxpay.max_attempts",
							"Sets how many times the background worker tries one stop request.",
							"A request whose attempts all end in a retryable failure is marked failed.",
							&wxpay_max_attempts,
							10, 1, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.reconcile_delay",
							"Sets how long the background worker waits before settling an attempt whose outcome is unknown.",
							"The request may still be in progress at WeChat Pay; the plan is queried only after this delay.",
							&wxpay_reconcile_delay,
							10000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("wxpay.stop_request_retention",
							"Sets how long finished stop requests are kept before the background worker deletes them.",
							"Zero keeps them until wxpay_purge_stop_requests() deletes them.",
							&wxpay_stop_request_retention,
							0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);
}

/*
 * A statement on queue table q, prepared once and kept.  cursor_options
 * CURSOR_OPT_CUSTOM_PLAN plans each execution afresh, for the table as it
 * is then: a plan cached while the table was small (a seq scan) would be
 * kept as it grows.
 */
static SPIPlanPtr
QueuePrepare(QueuePlan *slot, const char *q, const char *fmt, int nargs,
			 Oid *types, int cursor_options)
{
	char	   *sql;

	if (slot->plan != NULL && slot->q != NULL && strcmp(slot->q, q) == 0)
		return slot->plan;
	if (slot->plan)
		SPI_freeplan(slot->plan);
	slot->plan = NULL;
	if (slot->q)
		pfree(slot->q);
	slot->q = NULL;
	sql = psprintf(fmt, q, q);
	slot->plan = SPI_prepare_cursor(sql, nargs, types, cursor_options);
	if (slot->plan == NULL || SPI_keepplan(slot->plan) != 0)
		wxpay_spi_error("SPI_prepare_cursor", SPI_result);
	slot->q = MemoryContextStrdup(TopMemoryContext, q);
	return slot->plan;
}

/* SPI_execute_plan, then back to the caller's memory context. */
static int
QueueExecPlan(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only)
{
	MemoryContext cxt = CurrentMemoryContext;
	int			ret = SPI_execute_plan(plan, values, nulls, read_only, 0);

	MemoryContextSwitchTo(cxt);
	return ret;
}

/*
 * Copies of a database.  CREATE DATABASE ... TEMPLATE of a database with
 * the extension, and its dump restored elsewhere, carry the queue's
 * unfinished requests, which are the original's to send.  The table
 * wxpay_queue_home names the database whose queue it is; the worker serves
 * this queue, and the enqueue adds to it, only while every row there names
 * the current database.  A copy with no unfinished request becomes its
 * own home at once (there is nothing of the original's to hold).  Returns
 * the other database named there, or InvalidOid when this database is the
 * home (or the extension predates the table).  In a read-write
 * transaction, SPI connected.
 */
Oid
wxpay_queue_home_other(Oid nspoid)
{
	static QueuePlan home_slot;
	bool		isnull;
	Datum		d;
	SPIPlanPtr	plan;

	if (!OidIsValid(get_relname_relid("wxpay_queue_home", nspoid)))
		return InvalidOid;
	/* kept: every enqueue asks */
	plan = QueuePrepare(&home_slot, wxpay_schema_quoted(nspoid),
						"SELECT database_oid FROM %s.wxpay_queue_home"
						" WHERE database_oid OPERATOR(pg_catalog.<>) $1 LIMIT 1",
						1, (Oid[]) {OIDOID}, 0);
	if (QueueExecPlan(plan, (Datum[]) {ObjectIdGetDatum(MyDatabaseId)}, NULL,
					  true) != SPI_OK_SELECT)
		elog(ERROR, "could not read wxpay_queue_home");
	if (SPI_processed == 0)
		return InvalidOid;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

	/* a copy with nothing unfinished has nothing of the original's to hold */
	if (QueueExec(psprintf("SELECT 1 FROM %s.wxpay_stop_request WHERE state"
						   " OPERATOR(pg_catalog.=) ANY ('{queued,sending}'::pg_catalog.text[]) LIMIT 1",
						   wxpay_schema_quoted(nspoid)),
				  0, NULL, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "could not look for unfinished stop requests");
	if (SPI_processed == 0)
	{
		QueueAdoptHome(nspoid);
		return InvalidOid;
	}
	return isnull ? InvalidOid : DatumGetObjectId(d);
}

/* This database becomes the home of its queue (wxpay_queue_home). */
static void
QueueAdoptHome(Oid nspoid)
{
	char	   *nsp = wxpay_schema_quoted(nspoid);

	if (QueueExec(psprintf("DELETE FROM %s.wxpay_queue_home", nsp),
				  0, NULL, NULL, false) != SPI_OK_DELETE ||
		QueueExec(psprintf("INSERT INTO %s.wxpay_queue_home (database_oid) VALUES ($1)", nsp),
				  1, (Oid[]) {OIDOID}, (Datum[]) {ObjectIdGetDatum(MyDatabaseId)},
				  false) != SPI_OK_INSERT)
		elog(ERROR, "could not write wxpay_queue_home");
}

/* The error of a queue that is another database's (see above). */
void
wxpay_queue_home_error(int elevel, const char *dbname, Oid other)
{
	ereport(elevel,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the stop request queue of database \"%s\" belongs to another database",
					dbname ? dbname : "?"),
			 errdetail("This database was copied or restored from the database with OID %u; its unfinished stop requests are that database's to send, so nothing of this queue is sent.",
					   other),
			 errhint("If this database is a copy, delete its unfinished requests (DELETE FROM wxpay_stop_request WHERE state IN ('queued', 'sending')) and run SELECT wxpay_adopt_stop_requests(); if it replaces the original, run SELECT wxpay_adopt_stop_requests() alone: each unfinished request is then queried before anything is sent.")));
}

/*
 * wxpay_adopt_stop_requests(): this database becomes the home of the queue
 * it holds.  Every unfinished request is marked outcome unknown, so that its
 * next attempt queries the plan before anything is sent (the original may
 * have sent it); returns how many.
 */
PG_FUNCTION_INFO_V1(wxpay_adopt_stop_requests);
Datum
wxpay_adopt_stop_requests(PG_FUNCTION_ARGS)
{
	Oid			nspoid = get_func_namespace(fcinfo->flinfo->fn_oid);
	char	   *nsp = wxpay_schema_quoted(nspoid);
	int64		n;

	wxpay_spi_connect();
	QueueAdoptHome(nspoid);
	if (QueueExec(psprintf("UPDATE %s.wxpay_stop_request SET outcome_unknown = true"
						   " WHERE state OPERATOR(pg_catalog.=) ANY ('{queued,sending}'::pg_catalog.text[])",
						   nsp),
				  0, NULL, NULL, false) != SPI_OK_UPDATE)
		elog(ERROR, "could not mark the unfinished stop requests");
	n = (int64) SPI_processed;
	SPI_finish();
	wxpay_worker_wake_at_commit(WXPAY_WAKE_QUEUE);
	PG_RETURN_INT64(n);
}

/* The extension's schema in this database, or InvalidOid. */
Oid
wxpay_queue_schema(void)
{
	bool		isnull;
	Datum		d;

	if (QueueExec("SELECT extnamespace FROM pg_catalog.pg_extension"
				  " WHERE extname OPERATOR(pg_catalog.=) 'wxpay_signplan'", 0, NULL, NULL, true) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the wxpay_signplan extension");
	if (SPI_processed == 0)
		return InvalidOid;
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return DatumGetObjectId(d);
}

/* The queue table's qualified name, in the current memory context. */
char *
wxpay_queue_table(Oid nspoid)
{
	return psprintf("%s.wxpay_stop_request", wxpay_schema_quoted(nspoid));
}

/*
 * Rows left in "sending" belong to no attempt any more: the worker that
 * claimed them crashed, was killed, or failed while they were in flight.
 * Their mark is kept (a stop may have left); the next attempt, not before
 * wxpay.reconcile_delay, queries first.  An attempt cut off this way
 * counts, so a request that kills the worker every time still ends.
 */
void
wxpay_queue_reconcile(const char *q)
{
	char	   *sql;
	int			ret;

	sql = psprintf("WITH r AS ("
				   " UPDATE %s SET"
				   "  state = CASE WHEN attempts OPERATOR(pg_catalog.>=) $1 THEN 'failed' ELSE 'queued' END,"
				   "  finished_at = CASE WHEN attempts OPERATOR(pg_catalog.>=) $1 THEN pg_catalog.now() END,"
				   "  next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+) pg_catalog.make_interval(secs => $2),"
				   "  http_status = NULL, request_id = NULL,"
				   "  error_code = 'WX003',"
				   "  error_message = 'The worker stopped while this request was in flight, so the outcome of that attempt is unknown.'"
				   " WHERE state OPERATOR(pg_catalog.=) 'sending' RETURNING id, state)"
				   " SELECT pg_catalog.pg_notify('wxpay_stop_request', id::pg_catalog.text)"
				   " FROM r WHERE state OPERATOR(pg_catalog.=) 'failed'", q);
	ret = QueueExec(sql, 2, (Oid[]) {INT4OID, FLOAT8OID},
					(Datum[]) {Int32GetDatum(wxpay_max_attempts),
					Float8GetDatum(wxpay_reconcile_delay / 1000.0)}, false);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not reconcile stop requests: SPI error %d", ret);
}

/*
 * The configs that have queued requests, by a skip scan of the per-config
 * index: one probe per config, however long the queue.
 */
List *
wxpay_queue_configs(const char *q)
{
	static QueuePlan slot;
	SPIPlanPtr	plan;
	List	   *names = NIL;

	plan = QueuePrepare(&slot, q,
						"WITH RECURSIVE c(name) AS ("
						" (SELECT config_name FROM %s WHERE state OPERATOR(pg_catalog.=) 'queued'"
						"  ORDER BY config_name LIMIT 1)"
						" UNION ALL"
						" SELECT (SELECT config_name FROM %s WHERE state OPERATOR(pg_catalog.=) 'queued'"
						"  AND config_name OPERATOR(pg_catalog.>) c.name ORDER BY config_name LIMIT 1)"
						" FROM c WHERE c.name IS NOT NULL)"
						" SELECT name FROM c WHERE name IS NOT NULL", 0, NULL, 0);
	if (QueueExecPlan(plan, NULL, NULL, false) != SPI_OK_SELECT)
		elog(ERROR, "could not scan the stop request queue");
	for (uint64 i = 0; i < SPI_processed; i++)
		names = lappend(names, SPI_getvalue(SPI_tuptable->vals[i],
											SPI_tuptable->tupdesc, 1));
	return names;
}

/*
 * Claim up to limit due requests of one config, one per plan (a plan with
 * a request in flight gets none): state "sending", attempts + 1, the mark
 * set, the current timeline recorded.  A row last written on another
 * timeline, or on none, counts as marked (the timeline rule at the top of
 * the file).  The transaction commits with synchronous_commit = on, so that
 * all of this is durable before the worker sends anything (see the top of
 * the file).  Fills rows (allocated by the caller, limit entries); returns
 * how many.
 */
int
wxpay_queue_claim(const char *q, const char *config_name, int limit,
				  WxpayQueueRow *rows)
{
	static QueuePlan select_slot;
	static QueuePlan update_slot;
	static QueuePlan select_old_slot;
	static QueuePlan update_old_slot;
	SPIPlanPtr	plan;
	int			n = 0;
	Datum	   *ids;
	ArrayType  *arr;
	bool		has_timeline;
	Datum		timeline;

	if (limit <= 0)
		return 0;

	/* flushed, and replicated to synchronous standbys, before any send */
	(void) set_config_option("synchronous_commit", "on", PGC_SUSET,
							 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);

	/* the worker runs only after recovery: the timeline is settled */
	timeline = Int32GetDatum((int32) GetWALInsertionTimeLine());
	has_timeline = QueueHasTimeline(DatumGetObjectId(DirectFunctionCall1(regclassin,
																		 CStringGetDatum(q))));

	/*
	 * Plans of different sub-merchants (partner mode) with one number count
	 * as one here: they only wait for each other.  The expression of the
	 * mark differs only in its timeline rule (an install not yet updated to
	 * 0.4.0 has no timeline column).  The plan check is a subplan of its
	 * own (OFFSET 0: never turned into a join), so that each candidate is
	 * one lookup of its plan number in the index of requests in sending;
	 * as a join the planner may scan every entry of the config there, the
	 * dead ones of finished requests included, for each candidate, which
	 * grows with the queue's history until a vacuum.
	 */
#define QUEUE_CLAIM_SELECT(mark) \
	"SELECT id, merchant_sign_plan_no, stop_reason, attempts, " mark ", sub_mchid" \
	" FROM %s r" \
	" WHERE state OPERATOR(pg_catalog.=) 'queued' AND config_name OPERATOR(pg_catalog.=) $1" \
	" AND next_attempt_at OPERATOR(pg_catalog.<=) pg_catalog.now()" \
	" AND NOT EXISTS (SELECT 1 FROM %s s WHERE s.state OPERATOR(pg_catalog.=) 'sending'" \
	"  AND s.config_name OPERATOR(pg_catalog.=) r.config_name" \
	"  AND s.merchant_sign_plan_no OPERATOR(pg_catalog.=) r.merchant_sign_plan_no OFFSET 0)" \
	" ORDER BY next_attempt_at, id LIMIT $2" \
	" FOR UPDATE SKIP LOCKED"
	if (has_timeline)
		plan = QueuePrepare(&select_slot, q,
							QUEUE_CLAIM_SELECT("(outcome_unknown OR timeline IS NULL"
											   " OR NOT (timeline OPERATOR(pg_catalog.=) $3))"),
							3, (Oid[]) {TEXTOID, INT4OID, INT4OID}, 0);
	else
		plan = QueuePrepare(&select_old_slot, q, QUEUE_CLAIM_SELECT("outcome_unknown"),
							2, (Oid[]) {TEXTOID, INT4OID}, 0);
#undef QUEUE_CLAIM_SELECT
	if (QueueExecPlan(plan, (Datum[]) {CStringGetTextDatum(config_name),
						  Int32GetDatum(limit), timeline}, NULL, false) != SPI_OK_SELECT)
		elog(ERROR, "could not claim stop requests");

	ids = palloc(sizeof(Datum) * Max(SPI_processed, 1));
	for (uint64 i = 0; i < SPI_processed && n < limit; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		WxpayQueueRow *r = &rows[n];
		bool		isnull;
		bool		dup = false;

		r->plan_no = SPI_getvalue(tup, desc, 2);
		/* two due requests of one plan: the later waits its turn */
		for (int j = 0; j < n && !dup; j++)
			dup = strcmp(rows[j].plan_no, r->plan_no) == 0;
		if (dup)
			continue;
		r->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		r->config_name = pstrdup(config_name);
		r->stop_reason = DatumGetTextPCopy(SPI_getbinval(tup, desc, 3, &isnull));
		r->attempts = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull)) + 1;
		r->unknown = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));
		r->sub_mchid = SPI_getvalue(tup, desc, 6);	/* NULL when NULL */
		ids[n++] = Int64GetDatum(r->id);
	}
	if (n == 0)
		return 0;

	arr = construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	/* planned for each claim: a seq scan only while the table is small */
#define QUEUE_CLAIM_UPDATE(set) \
	"UPDATE %s SET state = 'sending', attempts = attempts OPERATOR(pg_catalog.+) 1," \
	" outcome_unknown = true" set " WHERE id OPERATOR(pg_catalog.=) ANY ($1)"
	if (has_timeline)
		plan = QueuePrepare(&update_slot, q, QUEUE_CLAIM_UPDATE(", timeline = $2"),
							2, (Oid[]) {INT8ARRAYOID, INT4OID}, CURSOR_OPT_CUSTOM_PLAN);
	else
		plan = QueuePrepare(&update_old_slot, q, QUEUE_CLAIM_UPDATE(""),
							1, (Oid[]) {INT8ARRAYOID}, CURSOR_OPT_CUSTOM_PLAN);
#undef QUEUE_CLAIM_UPDATE
	if (QueueExecPlan(plan, (Datum[]) {PointerGetDatum(arr), timeline},
					  NULL, false) != SPI_OK_UPDATE ||
		SPI_processed != (uint64) n)
		elog(ERROR, "could not claim stop requests");
	return n;
}

/*
 * Claimed requests of which nothing was sent, queued again: attempt
 * uncounted, mark restored, and due again delay_ms from now (delay_ms < 0:
 * when they were due before the claim).
 */
static void
QueueRequeue(const char *q, WxpayQueueRow **rows, int n, int delay_ms)
{
	char	   *sql;
	Datum	   *ids;
	Datum	   *marks;

	if (n <= 0)
		return;
	ids = palloc(sizeof(Datum) * n);
	marks = palloc(sizeof(Datum) * n);
	for (int i = 0; i < n; i++)
	{
		ids[i] = Int64GetDatum(rows[i]->id);
		marks[i] = BoolGetDatum(rows[i]->unknown);
	}
	sql = psprintf("UPDATE %s q SET state = 'queued', attempts = q.attempts OPERATOR(pg_catalog.-) 1,"
				   " outcome_unknown = u.unknown,"
				   " next_attempt_at = CASE WHEN $3 OPERATOR(pg_catalog.<) 0 THEN q.next_attempt_at"
				   "  ELSE pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+)"
				   "  pg_catalog.make_interval(secs => $3 OPERATOR(pg_catalog./) 1000.0) END"
				   " FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]),"
				   "  pg_catalog.unnest($2::pg_catalog.bool[])) u(id, unknown)"
				   " WHERE q.id OPERATOR(pg_catalog.=) u.id AND " QUEUE_BY_ID_SENDING("q."), q);
	if (QueueExec(sql, 3, (Oid[]) {INT8ARRAYOID, BOOLARRAYOID, INT4OID},
				  (Datum[]) {
		PointerGetDatum(construct_array(ids, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE)),
			PointerGetDatum(construct_array(marks, n, BOOLOID, 1, true, TYPALIGN_CHAR)),
			Int32GetDatum(delay_ms)},
				  false) != SPI_OK_UPDATE)
		elog(ERROR, "could not queue stop requests again");
}

/*
 * Claimed requests of which nothing was sent (the worker hit an error
 * first): queued again as they were, attempt uncounted, mark restored.
 */
void
wxpay_queue_release(const char *q, WxpayQueueRow **rows, int n)
{
	QueueRequeue(q, rows, n, -1);
}

/*
 * Claimed requests of which nothing was sent, to be tried again no sooner
 * than delay_ms from now: queued again, attempt uncounted, mark restored.
 * For requests whose config cannot be used for a reason outside them (the
 * server lacks the root key of its keys: config/rootkey.c), which a later
 * reload may cure.
 */
void
wxpay_queue_defer(const char *q, WxpayQueueRow **rows, int n, int delay_ms)
{
	QueueRequeue(q, rows, n, Max(delay_ms, 0));
}

/*
 * A one-dimensional array of n values of type elemtype, isnull[i] marking
 * NULLs (isnull NULL: none).
 */
static Datum
QueueArray(Datum *values, bool *isnull, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(values, isnull, 1, dims, lbs, elemtype,
											  typlen, typbyval, typalign));
}

/*
 * Outcomes outs[0..n-1], all successes or all not, in one statement: each
 * row finds its values by its position in the array of ids (the first, if
 * an id came twice: as one statement per outcome did, where the first left
 * the row no longer in "sending").
 */
static void
QueueRecordRun(SPIPlanPtr plan, WxpayQueueOutcome *outs, int n, bool ok,
			   Oid plan_type)
{
	Datum	   *ids = palloc(sizeof(Datum) * n);
	Datum	   *status = palloc(sizeof(Datum) * n);
	bool	   *status_null = palloc(sizeof(bool) * n);
	Datum	   *reqid = palloc(sizeof(Datum) * n);
	bool	   *reqid_null = palloc(sizeof(bool) * n);
	Datum	   *a = palloc(sizeof(Datum) * n);	/* result, or error_code */
	bool	   *a_null = palloc(sizeof(bool) * n);
	Datum	   *msg = palloc(sizeof(Datum) * n);
	bool	   *msg_null = palloc(sizeof(bool) * n);
	Datum	   *retry = palloc(sizeof(Datum) * n);
	Datum	   *delay = palloc(sizeof(Datum) * n);
	Datum	   *unknown = palloc(sizeof(Datum) * n);
	Datum		v[8];

	for (int i = 0; i < n; i++)
	{
		WxpayQueueOutcome *o = &outs[i];
		bool		r = o->fate == WXPAY_QUEUE_RETRY;

		ids[i] = Int64GetDatum(o->id);
		status[i] = Int32GetDatum((int32) o->http_status);
		status_null[i] = o->http_status == 0;
		reqid_null[i] = o->request_id == NULL;
		reqid[i] = reqid_null[i] ? (Datum) 0 : CStringGetTextDatum(o->request_id);
		if (ok)
		{
			a[i] = o->result;
			a_null[i] = false;
			continue;
		}
		a_null[i] = o->error_code == NULL;
		a[i] = a_null[i] ? (Datum) 0 : CStringGetTextDatum(o->error_code);
		msg_null[i] = o->error_message == NULL;
		msg[i] = msg_null[i] ? (Datum) 0 : CStringGetTextDatum(o->error_message);
		retry[i] = BoolGetDatum(r);
		delay[i] = Float8GetDatum(r ? o->delay_ms / 1000.0 : 0.0);
		unknown[i] = BoolGetDatum(o->unknown);
	}
	v[0] = QueueArray(ids, NULL, n, INT8OID);
	v[1] = QueueArray(status, status_null, n, INT4OID);
	v[2] = QueueArray(reqid, reqid_null, n, TEXTOID);
	if (ok)
		v[3] = QueueArray(a, a_null, n, plan_type);
	else
	{
		v[3] = QueueArray(a, a_null, n, TEXTOID);
		v[4] = QueueArray(msg, msg_null, n, TEXTOID);
		v[5] = QueueArray(retry, NULL, n, BOOLOID);
		v[6] = QueueArray(delay, NULL, n, FLOAT8OID);
		v[7] = QueueArray(unknown, NULL, n, BOOLOID);
	}
	if (SPI_execute_plan(plan, v, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record the outcomes of stop requests");
}

/*
 * Write outcomes of attempts; NOTIFY wxpay_stop_request with the id of each
 * finished request (delivered when the transaction commits).  One statement
 * per run of successes or of other outcomes, in their order.
 */
void
wxpay_queue_record(const char *q, WxpayQueueOutcome *outs, int n,
				   Oid plan_type)
{
	static char *plans_q = NULL;	/* the table the saved plans are for */
	static Oid	plans_type = InvalidOid;
	static SPIPlanPtr ok_plan = NULL;
	static SPIPlanPtr fail_plan = NULL;
	int			start = 0;

	/*
	 * Prepared once per table and row type, kept across transactions, and
	 * planned for each use (id = ANY: the table's size decides the scan).
	 */
	if (plans_q == NULL || strcmp(plans_q, q) != 0 || plans_type != plan_type)
	{
		char	   *ok_sql;
		char	   *fail_sql;

		if (ok_plan)
			SPI_freeplan(ok_plan);
		if (fail_plan)
			SPI_freeplan(fail_plan);
		ok_plan = fail_plan = NULL;
		if (plans_q)
			pfree(plans_q);
		plans_q = NULL;

#define QUEUE_AT(arr) arr "[pg_catalog.array_position($1, id)]"
		ok_sql = psprintf("WITH r AS (UPDATE %s SET state = 'succeeded',"
						  " finished_at = pg_catalog.now(), http_status = " QUEUE_AT("$2") ","
						  " request_id = " QUEUE_AT("$3") ", result = " QUEUE_AT("$4") ","
						  " error_code = NULL, error_message = NULL, outcome_unknown = false"
						  " WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND " QUEUE_BY_ID_SENDING("") " RETURNING id)"
						  " SELECT pg_catalog.pg_notify('wxpay_stop_request', id::pg_catalog.text) FROM r",
						  q);
		fail_sql = psprintf("WITH r AS (UPDATE %s SET"
							" state = CASE WHEN " QUEUE_AT("$6") " THEN 'queued' ELSE 'failed' END,"
							" finished_at = CASE WHEN " QUEUE_AT("$6") " THEN NULL ELSE pg_catalog.now() END,"
							" next_attempt_at = pg_catalog.now() OPERATOR(pg_catalog.+)"
							"  pg_catalog.make_interval(secs => " QUEUE_AT("$7") "),"
							" http_status = " QUEUE_AT("$2") ", request_id = " QUEUE_AT("$3") ","
							" error_code = " QUEUE_AT("$4") ", error_message = " QUEUE_AT("$5") ","
							" outcome_unknown = " QUEUE_AT("$8")
							" WHERE id OPERATOR(pg_catalog.=) ANY ($1) AND " QUEUE_BY_ID_SENDING("")
							" RETURNING id, state)"
							" SELECT pg_catalog.pg_notify('wxpay_stop_request', id::pg_catalog.text)"
							" FROM r WHERE state OPERATOR(pg_catalog.=) 'failed'", q);
#undef QUEUE_AT

		if (OidIsValid(plan_type))
		{
			ok_plan = SPI_prepare_cursor(ok_sql, 4,
										 (Oid[]) {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
										 get_array_type(plan_type)},
										 CURSOR_OPT_CUSTOM_PLAN);
			if (ok_plan == NULL || SPI_keepplan(ok_plan) != 0)
				wxpay_spi_error("SPI_prepare_cursor", SPI_result);
		}
		fail_plan = SPI_prepare_cursor(fail_sql, 8,
									   (Oid[]) {INT8ARRAYOID, INT4ARRAYOID, TEXTARRAYOID,
									   TEXTARRAYOID, TEXTARRAYOID, BOOLARRAYOID,
									   FLOAT8ARRAYOID, BOOLARRAYOID},
									   CURSOR_OPT_CUSTOM_PLAN);
		if (fail_plan == NULL || SPI_keepplan(fail_plan) != 0)
			wxpay_spi_error("SPI_prepare_cursor", SPI_result);
		plans_q = MemoryContextStrdup(TopMemoryContext, q);
		plans_type = plan_type;
	}

	for (int i = 1; i <= n; i++)
	{
		bool		ok = outs[start].fate == WXPAY_QUEUE_SUCCEEDED;

		if (i < n && (outs[i].fate == WXPAY_QUEUE_SUCCEEDED) == ok)
			continue;
		if (ok && ok_plan == NULL)
			elog(ERROR, "type wxpay_sign_plan is missing");
		QueueRecordRun(ok ? ok_plan : fail_plan, outs + start, i - start, ok,
					   plan_type);
		start = i;
	}
}

/* When the next queued request is due (DT_NOEND: none is queued). */
TimestampTz
wxpay_queue_next_due(const char *q)
{
	char	   *sql;
	bool		isnull;
	Datum		d;

	sql = psprintf("SELECT pg_catalog.min(next_attempt_at) FROM %s"
				   " WHERE state OPERATOR(pg_catalog.=) 'queued'", q);
	/* not read-only: see the outcomes this transaction just recorded */
	if (QueueExec(sql, 0, NULL, NULL, false) != SPI_OK_SELECT)
		elog(ERROR, "could not scan the stop request queue");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	return isnull ? DT_NOEND : DatumGetTimestampTz(d);
}

/* Delete finished requests older than wxpay.stop_request_retention. */
void
wxpay_queue_purge(const char *q)
{
	char	   *sql;

	sql = psprintf("DELETE FROM %s WHERE id OPERATOR(pg_catalog.=) ANY (SELECT id FROM %s"
				   " WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['succeeded', 'failed']::pg_catalog.text[])"
				   " AND finished_at OPERATOR(pg_catalog.<)"
				   " (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(secs => $1))"
				   " LIMIT %d)", q, q, 10000);
	if (QueueExec(sql, 1, (Oid[]) {FLOAT8OID},
				  (Datum[]) {Float8GetDatum((double) wxpay_stop_request_retention)},
				  false) != SPI_OK_DELETE)
		elog(ERROR, "could not purge finished stop requests");
}
