/*-------------------------------------------------------------------------
 *
 * notification.c
 *	  SQL-callable entry points for WeChat Pay's notifications:
 *	  wxpay_verify_notification() and wxpay_sign_plan_from_json().
 *
 * wxpay_verify_notification() is SECURITY DEFINER (see the install
 * script) so that it may read the config's keys; it writes nothing and
 * returns only the notification.  Its body's size is judged from the
 * datum's header before the value is detoasted, so that an oversized body
 * costs no work.  wxpay_accept_notification(), which stores what this
 * returns, is PL/pgSQL in the install script: an INSERT ... ON CONFLICT DO
 * NOTHING, a SELECT and a NOTIFY need no C.
 *
 * wxpay_sign_plan_from_json() is pure: the decrypted resource to the typed
 * wxpay_sign_plan, by the same conversion as a stop's answer (response.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

PG_FUNCTION_INFO_V1(wxpay_verify_notification);
Datum
wxpay_verify_notification(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Size		body_size;
	text	   *body;
	Jsonb	   *headers;
	char	   *config_name;
	WxpayNotification n;
	Datum		values[6];
	bool		nulls[6] = {false, false, false, false, false, false};

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("headers must not be null")));
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("body must not be null")));
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("config_name must not be null")));

	/* before any work: the size, from the header alone */
	body_size = toast_raw_datum_size(PG_GETARG_DATUM(1)) - VARHDRSZ;
	if (body_size > WXPAY_MAX_NOTIFICATION_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_TOO_LARGE),
				 errmsg("notification body is too large"),
				 errdetail("The body has %zu bytes; at most %d are accepted.",
						   (size_t) body_size, WXPAY_MAX_NOTIFICATION_BYTES)));

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	headers = PG_GETARG_JSONB_P(0);
	body = PG_GETARG_TEXT_PP(1);
	config_name = text_to_cstring(PG_GETARG_TEXT_PP(2));

	wxpay_notify_verify(config_name, get_func_namespace(fcinfo->flinfo->fn_oid),
						headers, VARDATA_ANY(body), VARSIZE_ANY_EXHDR(body), &n);

	values[0] = CStringGetTextDatum(n.id);
	values[1] = TimestampTzGetDatum(n.create_time);
	values[2] = CStringGetTextDatum(n.event_type);
	values[3] = CStringGetTextDatum(n.resource_type);
	if (n.summary)
		values[4] = CStringGetTextDatum(n.summary);
	else
		nulls[4] = true;
	values[5] = JsonbPGetDatum(n.resource);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

PG_FUNCTION_INFO_V1(wxpay_sign_plan_from_json);
Datum
wxpay_sign_plan_from_json(PG_FUNCTION_ARGS)
{
	Jsonb	   *resource = PG_GETARG_JSONB_P(0);
	TupleDesc	tupdesc;
	Datum	   *values;
	bool	   *nulls;
	char	   *why = NULL;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	if (!JB_ROOT_IS_OBJECT(resource) || JB_ROOT_IS_SCALAR(resource))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("resource is not a sign plan"),
				 errdetail("It is not a JSON object.")));
	values = palloc(sizeof(Datum) * tupdesc->natts);
	nulls = palloc(sizeof(bool) * tupdesc->natts);
	if (!wxpay_container_to_tuple(&resource->root, tupdesc, values, nulls, &why))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("resource is not a sign plan"),
				 errdetail_internal("Its %s.", why)));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
