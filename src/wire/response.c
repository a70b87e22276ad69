/*-------------------------------------------------------------------------
 *
 * response.c
 *	  Turning WeChat Pay answer bodies into SQL values.
 *
 * JSON is parsed by PostgreSQL's own jsonb input function, after the body
 * is converted from UTF-8 to the database encoding (encoding.c: never an
 * error; characters the database lacks become "\uXXXX" text).  A body that is
 * not JSON, or too deep, makes jsonb_in() raise an error; we catch only
 * those (data exceptions and program limits, which leave no state behind:
 * jsonb_in holds no locks, buffers or files), flush them, and hand the
 * caller a reason, so that a malformed answer is classified like any other
 * failed answer instead of surfacing as a bare syntax error.  Cancels, out
 * of memory and everything else are re-thrown untouched.
 *
 * Conversion is driven by the target row type: each attribute is looked up
 * by name in the JSON object, so key order does not matter and unknown keys
 * are ignored.  It is strict about types: an integer field must hold an
 * integral JSON number in range, a time field an RFC 3339 string (or ""),
 * a jsonb field an array.  Text fields take strings, and numbers as their
 * text, because WeChat Pay may widen a type without notice.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <errno.h>

#include "catalog/pg_type.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

static bool ResponseInteger(JsonbValue *v, int64 min, int64 max, int64 *result);

/*
 * Parse body as JSON into jsonb.  Returns NULL with *why set (palloc'd)
 * when the body is not acceptable JSON.
 */
Jsonb *
wxpay_parse_jsonb(const char *body, size_t len, char **why)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	char	   *copy;
	Jsonb	   *volatile result = NULL;

	if (len == 0)
	{
		*why = pstrdup("the body is empty");
		return NULL;
	}
	if (memchr(body, '\0', len) != NULL)
	{
		*why = pstrdup("the body contains a NUL byte");
		return NULL;
	}
	/* WeChat Pay writes UTF-8; jsonb_in reads the database encoding */
	copy = wxpay_from_utf8(body, len, true, NULL);

	PG_TRY();
	{
		result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(copy)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		int			category;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		category = ERRCODE_TO_CATEGORY(edata->sqlerrcode);
		if (category != ERRCODE_DATA_EXCEPTION &&
			category != ERRCODE_PROGRAM_LIMIT_EXCEEDED)
			PG_RE_THROW();
		FlushErrorState();
		*why = psprintf("the body is not valid JSON (%s)", edata->message);
		FreeErrorData(edata);
		result = NULL;
	}
	PG_END_TRY();

	pfree(copy);
	return result;
}

/* An integral JSON number within [min, max]. */
static bool
ResponseInteger(JsonbValue *v, int64 min, int64 max, int64 *result)
{
	char	   *s;
	char	   *end;
	long long	n;

	if (v->type != jbvNumeric)
		return false;
	s = DatumGetCString(DirectFunctionCall1(numeric_out,
											NumericGetDatum(v->val.numeric)));
	if (s[0] == '\0' || strspn(s + (s[0] == '-'), "0123456789") != strlen(s + (s[0] == '-')))
		return false;
	errno = 0;
	n = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || n < min || n > max)
		return false;
	*result = (int64) n;
	return true;
}

/*
 * Fill values/nulls for tupdesc from the JSON object obj.  Returns false
 * with *why set when a field has the wrong type or format.
 */
bool
wxpay_container_to_tuple(JsonbContainer *obj, TupleDesc tupdesc,
						 Datum *values, bool *nulls, char **why)
{
	if (!JsonContainerIsObject(obj))
	{
		*why = pstrdup("it is not a JSON object");
		return false;
	}

	for (int i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		const char *name = NameStr(att->attname);
		JsonbValue *v;
		int64		n;

		nulls[i] = true;
		values[i] = (Datum) 0;
		if (att->attisdropped)
			continue;

		v = getKeyJsonValueFromContainer(obj, name, strlen(name), NULL);
		if (v == NULL || v->type == jbvNull)
			continue;

		switch (att->atttypid)
		{
			case TEXTOID:
				if (v->type == jbvString)
					values[i] = PointerGetDatum(cstring_to_text_with_len(v->val.string.val,
																		 v->val.string.len));
				else if (v->type == jbvNumeric)
					values[i] = DirectFunctionCall1(textin,
													DirectFunctionCall1(numeric_out,
																		NumericGetDatum(v->val.numeric)));
				else
				{
					*why = psprintf("field \"%s\" is not a string", name);
					return false;
				}
				break;

			case INT4OID:
				if (!ResponseInteger(v, PG_INT32_MIN, PG_INT32_MAX, &n))
				{
					*why = psprintf("field \"%s\" is not an integer in range", name);
					return false;
				}
				values[i] = Int32GetDatum((int32) n);
				break;

			case INT8OID:
				if (!ResponseInteger(v, PG_INT64_MIN, PG_INT64_MAX, &n))
				{
					*why = psprintf("field \"%s\" is not an integer in range", name);
					return false;
				}
				values[i] = Int64GetDatum(n);
				break;

			case TIMESTAMPTZOID:
				{
					TimestampTz ts;

					if (v->type != jbvString)
					{
						*why = psprintf("field \"%s\" is not a time string", name);
						return false;
					}
					if (v->val.string.len == 0)
						continue;	/* "" means unset */
					if (!wxpay_parse_rfc3339(v->val.string.val, v->val.string.len, &ts))
					{
						*why = psprintf("field \"%s\" is not an RFC 3339 time", name);
						return false;
					}
					values[i] = TimestampTzGetDatum(ts);
				}
				break;

			case JSONBOID:
				if (v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
				{
					*why = psprintf("field \"%s\" is not a JSON array", name);
					return false;
				}
				values[i] = JsonbPGetDatum(JsonbValueToJsonb(v));
				break;

			default:
				elog(ERROR, "unexpected type %u of attribute \"%s\"",
					 att->atttypid, name);
		}
		nulls[i] = false;
	}
	return true;
}

/*
 * The platform's error code and message from an error answer, each NULL
 * when absent (empty, HTML or otherwise non-JSON bodies).
 */
void
wxpay_error_body(const char *body, size_t len, char **code, char **message)
{
	char	   *why;
	Jsonb	   *jb;
	JsonbValue *v;

	*code = NULL;
	*message = NULL;
	jb = wxpay_parse_jsonb(body, len, &why);
	if (jb == NULL || !JsonContainerIsObject(&jb->root))
		return;

	v = getKeyJsonValueFromContainer(&jb->root, "code", 4, NULL);
	if (v != NULL && v->type == jbvString)
		*code = pnstrdup(v->val.string.val, v->val.string.len);
	v = getKeyJsonValueFromContainer(&jb->root, "message", 7, NULL);
	if (v != NULL && v->type == jbvString)
		*message = pnstrdup(v->val.string.val, v->val.string.len);
}
