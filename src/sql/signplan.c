/*-------------------------------------------------------------------------
 *
 * signplan.c
 *	  SQL-callable entry points: stopping and querying a sign plan, and
 *	  expanding its signed_detail_list.
 *
 * wxpay_stop_sign_plan() and wxpay_query_sign_plan() are SECURITY DEFINER (see the install script): it
 * runs as the extension owner so that config.c may read the keys, and it
 * returns only what WeChat Pay answered.  Every argument is checked before
 * any network I/O; all memory is palloc'd in the caller's per-call context,
 * so repeated calls leave nothing behind.
 *
 * Statistics: once the config name is known, the call is counted however
 * it ends (stats.c): its classified result, or, for an error raised on the
 * way (a config problem, a cancel), from a PG_CATCH that then re-throws.
 *
 * The detail functions are pure: jsonb in, rows out, materialized into a
 * tuplestore.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/executor.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/tuplestore.h"

#include "wxpay_signplan.h"

static void DetailsExpand(FunctionCallInfo fcinfo, Jsonb *list);

/*
 * One call of op for the plan in argument 0; the stop reason (for a stop)
 * in argument 1; the config name in argument config_arg and the sub-merchant
 * (partner mode, may be NULL) in the one after it.
 */
static Datum
SignPlanCall(FunctionCallInfo fcinfo, WxpayOperation op, int config_arg)
{
	WxpayCall	call;
	WxpayHttpRequest *req = &call.req;
	WxpayCallResult res;
	TupleDesc	tupdesc;
	char	   *config_name;
	volatile bool ok = false;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("merchant_sign_plan_no must not be null")));
	if (op == WXPAY_OP_STOP && PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("stop_reason must not be null")));

	memset(&call, 0, sizeof(call));
	call.op = op;
	call.plan_no = text_to_cstring(PG_GETARG_TEXT_PP(0));
	wxpay_check_plan_no_arg(call.plan_no);
	if (op == WXPAY_OP_STOP)
		call.stop_reason = wxpay_check_stop_reason_arg(PG_GETARG_TEXT_PP(1));
	call.sub_mchid = wxpay_sub_mchid_arg(fcinfo, config_arg + 1);
	config_name = wxpay_config_name_arg(fcinfo, config_arg);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	/* from here on it is a call: count it however it ends (stats.c) */
	PG_TRY();
	{
		call.cfg = wxpay_resolve_config(fcinfo, config_arg);
		wxpay_call_prepare(&call);
		wxpay_http_perform(&req, 1, 1);
		ok = wxpay_call_finish(&call, tupdesc, &res);
	}
	PG_CATCH();
	{
		wxpay_stat_error(config_name,
						 op == WXPAY_OP_STOP ? WXPAY_STAT_STOP : WXPAY_STAT_QUERY,
						 WXPAY_STAT_SESSION);
		PG_RE_THROW();
	}
	PG_END_TRY();
	wxpay_stat_call(&call, WXPAY_STAT_SESSION, ok, &res);
	if (!ok)
		wxpay_report(&res, ERROR);

	PG_RETURN_DATUM(HeapTupleGetDatum(res.tuple));
}

PG_FUNCTION_INFO_V1(wxpay_stop_sign_plan);
Datum
wxpay_stop_sign_plan(PG_FUNCTION_ARGS)
{
	return SignPlanCall(fcinfo, WXPAY_OP_STOP, 2);
}

PG_FUNCTION_INFO_V1(wxpay_query_sign_plan);
Datum
wxpay_query_sign_plan(PG_FUNCTION_ARGS)
{
	return SignPlanCall(fcinfo, WXPAY_OP_QUERY, 1);
}

/* Materialize one row per element of a signed_detail_list array. */
static void
DetailsExpand(FunctionCallInfo fcinfo, Jsonb *list)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	TupleDesc	tupdesc;
	Datum	   *values;
	bool	   *nulls;
	int			n;

	InitMaterializedSRF(fcinfo, 0);
	if (list == NULL)
		return;

	if (!JsonContainerIsArray(&list->root) || JB_ROOT_IS_SCALAR(list))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("signed_detail_list must be a JSON array")));

	tupdesc = rsinfo->setDesc;
	values = palloc(sizeof(Datum) * tupdesc->natts);
	nulls = palloc(sizeof(bool) * tupdesc->natts);
	n = JsonContainerSize(&list->root);

	for (int i = 0; i < n; i++)
	{
		JsonbValue *v = getIthJsonbValueFromContainer(&list->root, i);
		char	   *why = NULL;

		if (v->type != jbvBinary ||
			!wxpay_container_to_tuple(v->val.binary.data, tupdesc, values, nulls, &why))
		{
			/* why is a lower-case clause; a detail is a sentence */
			if (why == NULL)
				why = pstrdup("it is not a JSON object");
			why[0] = pg_toupper((unsigned char) why[0]);
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid element %d of signed_detail_list", i + 1),
					 errdetail("%s.", why)));
		}
		tuplestore_putvalues(rsinfo->setResult, tupdesc, values, nulls);
	}
}

PG_FUNCTION_INFO_V1(wxpay_sign_plan_details);
Datum
wxpay_sign_plan_details(PG_FUNCTION_ARGS)
{
	DetailsExpand(fcinfo, PG_GETARG_JSONB_P(0));
	return (Datum) 0;
}

PG_FUNCTION_INFO_V1(wxpay_sign_plan_details_plan);
Datum
wxpay_sign_plan_details_plan(PG_FUNCTION_ARGS)
{
	HeapTupleHeader plan = PG_GETARG_HEAPTUPLEHEADER(0);
	bool		isnull;
	Datum		list;

	list = GetAttributeByName(plan, "signed_detail_list", &isnull);
	DetailsExpand(fcinfo, isnull ? NULL : DatumGetJsonbP(list));
	return (Datum) 0;
}
