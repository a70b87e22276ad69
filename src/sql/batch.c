/*-------------------------------------------------------------------------
 *
 * batch.c
 *	  wxpay_stop_sign_plans(): stop many sign plans in one call, several
 *	  requests in flight at once, one result row per array element.
 *
 * What a row means.  Every array element gets exactly one row, in input
 * order.  A failure that concerns one plan (a NULL or invalid element, a
 * duplicate, a 4xx, a timeout, an answer that fails verification) is a row
 * with ok = false and the SQLSTATE the synchronous function would have
 * raised; it never ends the statement.  What concerns the whole call (a
 * NULL or invalid stop reason or sub_mchid, an unknown or unusable config)
 * is an error raised before anything is sent; a cancel or statement_timeout ends the
 * statement as usual.
 *
 * Once anything was sent, rows.  The config can become unusable while the
 * batch runs: its last platform certificate expires, or signing fails.
 * Before the first element went to the transport that is the statement's
 * WX001 ("nothing was sent" is then true).  After it, an error raised while
 * signing a later element (WX001, or a 22xxx data error) becomes that
 * element's row instead, so the rows of the stops already made are never
 * lost to an error that claims nothing was sent (BatchPrepare).  Everything
 * else still ends the statement: a cancel, statement_timeout, out of
 * memory, an internal error, and backend termination; the stops already
 * made are then unknown to the caller, who must query the plans.
 *
 * Duplicates.  A plan number that occurs again in the same array is not
 * sent again: its later rows are 22023 rows naming the first position.
 * Sending both would race two stops of one plan against each other, and
 * the loser's answer (already stopped, or the winner's 200) would depend on
 * timing; sending them one after the other would only fetch a certain 400.
 *
 * Flow and memory.  transport.c pulls requests from BatchNext() as slots
 * free up and hands each back to BatchDone() as it finishes.  Each of the
 * (at most wxpay.batch_concurrency) slots here owns a small memory context
 * holding one call: its signed request, its answer and the row made from
 * it; the context is reset as soon as the row is stored.  Requests are
 * signed just before they are sent, so a long array never has more than
 * that many signed bodies (or fresh timestamps going stale) in memory.
 * Rows arrive in completion order; each goes into a tuplesort keyed by its
 * position (bounded by work_mem, spilling to disk beyond it), and is read
 * back in input order into the result tuplestore at the end.  A slow
 * request thus never holds up the others.
 *
 * Statistics.  Each element sent is one call (stats.c), counted as its row
 * is made.  When a statement error ends the batch, the elements in flight
 * or being signed are counted as calls that ended in error; an error before
 * any element (the config) counts as one.  Input-error rows are no calls.
 *
 * Not transactional: every stop is an HTTP call made while the function
 * runs.  A cancel, statement_timeout or a rollback loses the rows but not
 * the stops already made.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_operator_d.h"
#include "catalog/pg_type_d.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/elog.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/tuplesort.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "wxpay_signplan.h"

/* settings (defined in BatchInit) */
int			wxpay_batch_concurrency = 8;

/* result columns (see the install script) */
#define COL_PLAN_NO			0
#define COL_OK				1
#define COL_SQLSTATE		2
#define COL_ERROR_CODE		3
#define COL_ERROR_MESSAGE	4
#define COL_REQUEST_ID		5
#define COL_PLAN			6
#define NUM_COLS			7
#define COL_ORDINAL			7	/* sort key, not returned */

/* one call in flight; req is inside call, which BatchDone relies on */
typedef struct BatchSlot
{
	WxpayCall	call;
	MemoryContext cxt;			/* everything of this call; reset after */
	int			ordinal;		/* 0-based array position; -1 when free */
} BatchSlot;

typedef struct BatchSeen
{
	char		plan_no[WXPAY_PLAN_NO_MAX + 1];	/* hash key */
	int			ordinal;		/* first position */
} BatchSeen;

typedef struct BatchState
{
	const WxpayConfig *cfg;
	const char *stop_reason;	/* UTF-8 */
	const char *sub_mchid;		/* every plan's sub-merchant, or NULL */
	Datum	   *elems;
	bool	   *elem_nulls;
	int			nelems;
	int			next;			/* next element to look at */
	HTAB	   *seen;			/* plan numbers sent so far */
	BatchSlot  *slots;
	int			nslots;
	TupleDesc	plan_desc;		/* wxpay_sign_plan, blessed */
	Tuplesortstate *sort;		/* rows with their ordinal */
	TupleTableSlot *sort_slot;
	MemoryContext row_cxt;		/* input-error rows; reset per row */
	int			nstarted;		/* elements taken up for sending */
	int			nsent;			/* elements handed to the transport */
	bool		preparing;		/* inside wxpay_call_prepare */
} BatchState;

static WxpayHttpRequest *BatchNext(void *arg);
static void BatchDone(WxpayHttpRequest *req, void *arg);
static void BatchPut(BatchState *st, int ordinal, const char *plan_no,
					 bool ok, int sqlstate, const char *error_code,
					 const char *error_message, const char *request_id,
					 HeapTuple plan);
static void BatchPutInputError(BatchState *st, int ordinal,
							   const char *plan_no, int sqlstate,
							   const char *message);
static bool BatchPrepare(BatchState *st, BatchSlot *slot, int ordinal);
static bool BatchElementError(int sqlstate);
static void BatchRun(FunctionCallInfo fcinfo, BatchState *st);
static void BatchCountError(BatchState *st, const char *config_name);

/* Store one row (copied into the sort) for array position ordinal. */
static void
BatchPut(BatchState *st, int ordinal, const char *plan_no, bool ok,
		 int sqlstate, const char *error_code, const char *error_message,
		 const char *request_id, HeapTuple plan)
{
	TupleTableSlot *slot = st->sort_slot;
	Datum	   *v;
	bool	   *n;

	ExecClearTuple(slot);
	v = slot->tts_values;
	n = slot->tts_isnull;
	memset(n, true, sizeof(bool) * (NUM_COLS + 1));

#define PUT_TEXT(col, s) \
	do { if ((s) != NULL) { v[col] = CStringGetTextDatum(s); n[col] = false; } } while (0)

	PUT_TEXT(COL_PLAN_NO, plan_no);
	v[COL_OK] = BoolGetDatum(ok);
	n[COL_OK] = false;
	if (!ok)
		PUT_TEXT(COL_SQLSTATE, unpack_sql_state(sqlstate));
	PUT_TEXT(COL_ERROR_CODE, error_code);
	PUT_TEXT(COL_ERROR_MESSAGE, error_message);
	PUT_TEXT(COL_REQUEST_ID, request_id);
	if (plan != NULL)
	{
		v[COL_PLAN] = HeapTupleGetDatum(plan);
		n[COL_PLAN] = false;
	}
	v[COL_ORDINAL] = Int32GetDatum(ordinal);
	n[COL_ORDINAL] = false;
#undef PUT_TEXT

	ExecStoreVirtualTuple(slot);
	tuplesort_puttupleslot(st->sort, slot);
}

/*
 * Defines the setting the batch reads.
 */
void
BatchInit(void)
{
	DefineCustomIntVariable("wxpay.batch_concurrency",
							"Sets how many requests wxpay_stop_sign_plans keeps in flight at once.",
							"Each request in flight uses its own kept-alive connection to WeChat Pay.",
							&wxpay_batch_concurrency,
							8, 1, WXPAY_BATCH_CONCURRENCY_MAX,
							PGC_USERSET,
							0,
							wxpay_pinned_check_hook, NULL, NULL);
}

static void
BatchPutInputError(BatchState *st, int ordinal, const char *plan_no,
				   int sqlstate, const char *message)
{
	MemoryContext old = MemoryContextSwitchTo(st->row_cxt);

	BatchPut(st, ordinal, plan_no, false, sqlstate, NULL, message, NULL, NULL);
	MemoryContextSwitchTo(old);
	MemoryContextReset(st->row_cxt);
}

/*
 * transport.c asks for the next request: skip (with a row each) elements
 * that cannot be sent, then sign the next one in a free slot.
 */
static WxpayHttpRequest *
BatchNext(void *arg)
{
	BatchState *st = (BatchState *) arg;

	while (st->next < st->nelems)
	{
		int			ordinal = st->next++;
		BatchSlot  *slot = NULL;
		BatchSeen  *seen;
		MemoryContext old;
		char	   *plan_no;
		bool		found;

		/* signing thousands of requests takes a while: stay cancelable */
		CHECK_FOR_INTERRUPTS();

		if (st->elem_nulls[ordinal])
		{
			BatchPutInputError(st, ordinal, NULL, ERRCODE_NULL_VALUE_NOT_ALLOWED,
							   "The array element is null.");
			continue;
		}

		for (int i = 0; i < st->nslots; i++)
			if (st->slots[i].ordinal < 0)
			{
				slot = &st->slots[i];
				break;
			}
		if (slot == NULL)
			elog(ERROR, "no free batch slot");

		old = MemoryContextSwitchTo(slot->cxt);
		plan_no = TextDatumGetCString(st->elems[ordinal]);
		if (wxpay_check_plan_no(plan_no, strlen(plan_no)) != WXPAY_TEXT_OK)
		{
			MemoryContextSwitchTo(old);
			BatchPutInputError(st, ordinal, plan_no, ERRCODE_INVALID_PARAMETER_VALUE,
							   "A merchant sign plan number is 1 to 32 characters from ASCII letters, digits, \"_\", \"-\" and \"*\".");
			MemoryContextReset(slot->cxt);
			continue;
		}

		seen = (BatchSeen *) hash_search(st->seen, plan_no, HASH_ENTER, &found);
		if (found)
		{
			char	   *msg = psprintf("The same merchant_sign_plan_no is element %d of the array; it is sent only once, for its first occurrence.",
									   seen->ordinal + 1);

			MemoryContextSwitchTo(old);
			BatchPutInputError(st, ordinal, plan_no, ERRCODE_INVALID_PARAMETER_VALUE, msg);
			MemoryContextReset(slot->cxt);
			continue;
		}
		seen->ordinal = ordinal;

		/* the one to send: configuration problems here are statement errors */
		memset(&slot->call, 0, sizeof(WxpayCall));
		slot->call.op = WXPAY_OP_STOP;
		slot->call.plan_no = plan_no;
		slot->call.stop_reason = st->stop_reason;
		slot->call.sub_mchid = st->sub_mchid;
		slot->call.cfg = st->cfg;
		st->nstarted++;
		if (!BatchPrepare(st, slot, ordinal))
		{
			/* its row is stored: on to the next element */
			MemoryContextSwitchTo(old);
			MemoryContextReset(slot->cxt);
			continue;
		}
		slot->call.req.resp_cxt = slot->cxt;
		slot->ordinal = ordinal;
		MemoryContextSwitchTo(old);
		st->nsent++;
		return &slot->call.req;
	}
	return NULL;
}

/*
 * The errors of signing one element that may become its row once something
 * was sent: the config became unusable (WX001), or a data error about the
 * element (22xxx).  These are raised by our own checks, holding nothing.
 */
static bool
BatchElementError(int sqlstate)
{
	return sqlstate == ERRCODE_WXPAY_CONFIG_ERROR ||
		ERRCODE_TO_CATEGORY(sqlstate) == ERRCODE_DATA_EXCEPTION;
}

/*
 * Sign the element's request in slot (the current memory context is the
 * slot's).  Before anything was sent its errors are the statement's; after,
 * the element errors of BatchElementError become its row (counted as a call
 * that ended in error) and false is returned.  Any other error propagates.
 */
static bool
BatchPrepare(BatchState *st, BatchSlot *slot, int ordinal)
{
	MemoryContext cxt = CurrentMemoryContext;
	volatile bool ok = true;

	st->preparing = true;
	if (st->nsent == 0)
	{
		wxpay_call_prepare(&slot->call);
		st->preparing = false;
		return true;
	}

	PG_TRY();
	{
		wxpay_call_prepare(&slot->call);
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		WxpayCallResult res;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (!BatchElementError(edata->sqlerrcode))
			PG_RE_THROW();
		FlushErrorState();

		/* the same text as any failure caught while preparing */
		memset(&res, 0, sizeof(res));
		res.sqlstate = edata->sqlerrcode;
		res.message = edata->message;
		res.detail = edata->detail;
		BatchPut(st, ordinal, slot->call.plan_no, false, res.sqlstate,
				 NULL, wxpay_report_text(&res), NULL, NULL);
		ok = false;
	}
	PG_END_TRY();
	st->preparing = false;
	if (!ok)
		wxpay_stat_attempt(st->cfg->name, WXPAY_STAT_STOP, WXPAY_STAT_SESSION,
						   WXPAY_STAT_ERROR, false, -1);
	return ok;
}

/* transport.c hands back a finished request: classify it, store its row */
static void
BatchDone(WxpayHttpRequest *req, void *arg)
{
	BatchState *st = (BatchState *) arg;
	BatchSlot  *slot = (BatchSlot *) ((char *) req - offsetof(BatchSlot, call.req));
	WxpayCallResult res;
	MemoryContext old;
	bool		ok;

	Assert(slot >= st->slots && slot < st->slots + st->nslots);
	old = MemoryContextSwitchTo(slot->cxt);
	ok = wxpay_call_finish(&slot->call, st->plan_desc, &res);
	if (ok)
		BatchPut(st, slot->ordinal, slot->call.plan_no, true, 0,
				 NULL, NULL, res.request_id, res.tuple);
	else
		BatchPut(st, slot->ordinal, slot->call.plan_no, false, res.sqlstate,
				 res.error_code, wxpay_report_text(&res), res.request_id, NULL);
	MemoryContextSwitchTo(old);
	MemoryContextReset(slot->cxt);
	/* counted once its row is stored: an error before is BatchCountError's */
	wxpay_stat_call(&slot->call, WXPAY_STAT_SESSION, ok, &res);
	slot->ordinal = -1;
}

PG_FUNCTION_INFO_V1(wxpay_stop_sign_plans);
Datum
wxpay_stop_sign_plans(PG_FUNCTION_ARGS)
{
	BatchState	st;
	char	   *config_name;

	/* whole-call arguments first: their errors come before anything is sent */
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stop_reason must not be null")));
	memset(&st, 0, sizeof(st));
	st.stop_reason = wxpay_check_stop_reason_arg(PG_GETARG_TEXT_PP(1));
	st.sub_mchid = wxpay_sub_mchid_arg(fcinfo, 3);
	config_name = wxpay_config_name_arg(fcinfo, 2);

	/* from here on errors are calls that ended in error (BatchCountError) */
	PG_TRY();
	{
		st.cfg = wxpay_resolve_config(fcinfo, 2);
		BatchRun(fcinfo, &st);
	}
	PG_CATCH();
	{
		BatchCountError(&st, config_name);
		PG_RE_THROW();
	}
	PG_END_TRY();
	return (Datum) 0;
}

/*
 * A statement error ends the batch: each element taken up for sending that
 * has no row yet (in flight, or being signed) is a call that ended in
 * error; an error before any element was taken up (the config) is one.
 */
static void
BatchCountError(BatchState *st, const char *config_name)
{
	int			n = st->preparing ? 1 : 0;

	for (int i = 0; i < st->nslots; i++)
		if (st->slots[i].ordinal >= 0)
			n++;
	if (n == 0 && st->nstarted == 0)
		n = 1;
	for (int i = 0; i < n; i++)
		wxpay_stat_error(config_name, WXPAY_STAT_STOP, WXPAY_STAT_SESSION);
}

/* Everything after the arguments: send, collect, return in input order. */
static void
BatchRun(FunctionCallInfo fcinfo, BatchState *st)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TupleDesc	out_desc;
	TupleDesc	sort_desc;
	ArrayType  *arr;
	HASHCTL		hctl;
	AttrNumber	sort_col = COL_ORDINAL + 1;
	Oid			sort_op = Int4LessOperator;
	Oid			sort_coll = InvalidOid;
	bool		nulls_first = false;

	InitMaterializedSRF(fcinfo, 0);
	out_desc = rsinfo->setDesc;
	if (out_desc->natts != NUM_COLS ||
		TupleDescAttr(out_desc, COL_PLAN)->atttypid == InvalidOid)
		elog(ERROR, "unexpected result type of wxpay_stop_sign_plans");

	/* a NULL array has no elements, like an empty one */
	if (PG_ARGISNULL(0))
		return;
	arr = PG_GETARG_ARRAYTYPE_P(0);
	if (ARR_NDIM(arr) > 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("merchant_sign_plan_nos must be a one-dimensional array")));
	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT,
					  &st->elems, &st->elem_nulls, &st->nelems);
	if (st->nelems == 0)
		return;

	st->plan_desc = lookup_rowtype_tupdesc_copy(TupleDescAttr(out_desc, COL_PLAN)->atttypid,
												TupleDescAttr(out_desc, COL_PLAN)->atttypmod);
	st->plan_desc = BlessTupleDesc(st->plan_desc);

	/* the rows as returned, plus their position to sort on */
	sort_desc = CreateTemplateTupleDesc(NUM_COLS + 1);
	for (int i = 0; i < NUM_COLS; i++)
		TupleDescCopyEntry(sort_desc, i + 1, out_desc, i + 1);
	TupleDescInitEntry(sort_desc, COL_ORDINAL + 1, "ordinal", INT4OID, -1, 0);
#if PG_VERSION_NUM >= 190000
	/* 19: a descriptor built by hand is finalized before any use */
	TupleDescFinalize(sort_desc);
#endif
	st->sort = tuplesort_begin_heap(sort_desc, 1, &sort_col, &sort_op, &sort_coll,
									&nulls_first, work_mem, NULL, TUPLESORT_NONE);
	st->sort_slot = MakeSingleTupleTableSlot(sort_desc, &TTSOpsMinimalTuple);

	memset(&hctl, 0, sizeof(hctl));
	hctl.keysize = WXPAY_PLAN_NO_MAX + 1;
	hctl.entrysize = sizeof(BatchSeen);
	hctl.hcxt = CurrentMemoryContext;
	st->seen = hash_create("wxpay_stop_sign_plans plan numbers", Min(st->nelems, 1024),
						   &hctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);

	st->nslots = Max(1, Min(Min(wxpay_batch_concurrency, WXPAY_BATCH_CONCURRENCY_MAX),
							st->nelems));
	st->slots = palloc0(sizeof(BatchSlot) * st->nslots);
	for (int i = 0; i < st->nslots; i++)
	{
		st->slots[i].cxt = AllocSetContextCreate(CurrentMemoryContext,
												 "wxpay_stop_sign_plans call",
												 ALLOCSET_DEFAULT_SIZES);
		st->slots[i].ordinal = -1;
	}
	st->row_cxt = AllocSetContextCreate(CurrentMemoryContext,
										"wxpay_stop_sign_plans row",
										ALLOCSET_SMALL_SIZES);

	wxpay_http_perform_stream(st->nslots, BatchNext, BatchDone, st);

	/* back to input order */
	tuplesort_performsort(st->sort);
	while (tuplesort_gettupleslot(st->sort, true, false, st->sort_slot, NULL))
	{
		slot_getallattrs(st->sort_slot);
		tuplestore_putvalues(rsinfo->setResult, out_desc,
							 st->sort_slot->tts_values,
							 st->sort_slot->tts_isnull);
	}
	tuplesort_end(st->sort);
	ExecDropSingleTupleTableSlot(st->sort_slot);
	for (int i = 0; i < st->nslots; i++)
		MemoryContextDelete(st->slots[i].cxt);
	MemoryContextDelete(st->row_cxt);
	hash_destroy(st->seen);
}
