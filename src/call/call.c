/*-------------------------------------------------------------------------
 *
 * call.c
 *	  One WeChat Pay APIv3 call: checked input, a signed request, and a
 *	  verified, classified answer.
 *
 * A call goes through three steps so that the synchronous function and the
 * callers that run many calls at once share them: wxpay_call_prepare()
 * checks the config and signs (no network), the transport performs the
 * request, wxpay_call_finish() verifies and converts the answer into either
 * a row or a WxpayCallResult describing the failure.  wxpay_report()
 * turns that description into an ereport, wxpay_report_text() into a
 * row's text.
 *
 * Classification, the contract callers branch on (doc/reference.md "Errors"):
 *	  WX004 request not sent: nothing reached WeChat Pay; safe to retry.
 *	  WX002 rejected: a 4xx answer; this call did not stop the plan.
 *	  WX003 outcome unknown: the request may have been acted on (timeout or
 *			failure after sending, 5xx, an answer that fails verification or
 *			cannot be read).
 * A request that went to the backup domain (transport.c, "Failover") is
 * classified the same way; its report says where it went.
 *
 * Every answer with status 2xx is verified before its body is looked at:
 * all four Wechatpay-* headers exactly once, timestamp within 300 s of our
 * clock, a configured key under that serial, a valid signature over
 * "timestamp\nnonce\nbody\n".  Error answers are not signed reliably by the
 * platform and are only reported, never trusted to mean success.
 *
 * Partner mode.  A call with sub_mchid set goes to the partner endpoint for
 * that sub-merchant (POST .../partner/.../{no}/stop with sub_mchid in the
 * body; GET .../partner/.../{no}?sub_mchid=... with the query string part of
 * the signed URL), signed with the config's own (the service provider's)
 * mchid, key and serial, and verified like any answer.  A verified answer
 * naming another plan number, or another sub_mchid than the one requested,
 * is not accepted: it is about a plan we did not ask about.
 *
 * Neither the Authorization header nor the signature is ever put into a
 * message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include "access/htup_details.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

static char *AttemptMessage(const WxpayAttempt *a);
static void AttemptLogFailover(const WxpayAttempt *a);
static const char *AttemptUnknownHint(const WxpayAttempt *a);
static void AttemptErrorAnswer(const WxpayAttempt *a, WxpayCallResult *res);
static bool CallRead(void *arg, WxpayHttpRequest *req, WxpayCallResult *res,
					 char **why);
static bool CallAnswerField(JsonbContainer *obj, const char *key,
							const char *want);

/*
 * The config_name argument argno of a SQL function: not null, as text.
 * Every function that takes a config name reads it here, so that they all
 * refuse a null alike (the name itself is looked up by wxpay_config_get).
 */
char *
wxpay_config_name_arg(FunctionCallInfo fcinfo, int argno)
{
	if (PG_ARGISNULL(argno))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("config_name must not be null")));
	return text_to_cstring(PG_GETARG_TEXT_PP(argno));
}

/*
 * The config named by argument argno, looked up in the schema of the called
 * function (the extension's), never through search_path.
 */
const WxpayConfig *
wxpay_resolve_config(FunctionCallInfo fcinfo, int argno)
{
	char	   *name;
	Oid			nspoid;

	name = wxpay_config_name_arg(fcinfo, argno);
	nspoid = get_func_namespace(fcinfo->flinfo->fn_oid);
	return wxpay_config_get(name, nspoid);
}

void
wxpay_check_plan_no_arg(const char *plan_no)
{
	if (wxpay_check_plan_no(plan_no, strlen(plan_no)) != WXPAY_TEXT_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid merchant_sign_plan_no \"%s\"", plan_no),
				 errdetail("A merchant sign plan number is 1 to 32 characters from ASCII letters, digits, \"_\", \"-\" and \"*\".")));
}

void
wxpay_check_sub_mchid_arg(const char *sub_mchid)
{
	if (wxpay_check_sub_mchid(sub_mchid, strlen(sub_mchid)) != WXPAY_TEXT_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid sub_mchid \"%s\"", sub_mchid),
				 errdetail("A sub-merchant number is 1 to %d ASCII digits.",
						   WXPAY_SUB_MCHID_MAX)));
}

/*
 * The checked sub_mchid of argument argno, or NULL (a direct merchant's
 * call) when it is NULL or absent: a function created by an older install
 * script passes fewer arguments.
 */
char *
wxpay_sub_mchid_arg(FunctionCallInfo fcinfo, int argno)
{
	char	   *sub_mchid;

	if (PG_NARGS() <= argno || PG_ARGISNULL(argno))
		return NULL;
	sub_mchid = text_to_cstring(PG_GETARG_TEXT_PP(argno));
	wxpay_check_sub_mchid_arg(sub_mchid);
	return sub_mchid;
}

/* Check a stop reason and return it in UTF-8, as it will be sent. */
char *
wxpay_check_stop_reason_arg(text *reason)
{
	const char *s = VARDATA_ANY(reason);
	int			len = VARSIZE_ANY_EXHDR(reason);
	char	   *utf8;

	utf8 = pg_server_to_any(s, len, PG_UTF8);
	if (utf8 == s)
		utf8 = pnstrdup(s, len);
	len = strlen(utf8);

	switch (wxpay_check_stop_reason(utf8, len))
	{
		case WXPAY_TEXT_OK:
			return utf8;
		case WXPAY_TEXT_EMPTY:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid stop_reason"),
					 errdetail("A stop reason must not be empty.")));
			break;
		case WXPAY_TEXT_TOO_LONG:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid stop_reason"),
					 errdetail("A stop reason is at most %d characters long.",
							   WXPAY_STOP_REASON_MAX)));
			break;
		case WXPAY_TEXT_FOUR_BYTE:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid stop_reason"),
					 errdetail("WeChat Pay accepts only characters of 1 to 3 bytes in UTF-8; emoji and other supplementary characters are refused.")));
			break;
		default:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("invalid stop_reason"),
					 errdetail("The stop reason is not valid UTF-8.")));
			break;
	}
	return NULL;				/* keep compiler quiet */
}

/*
 * Sign a request for cfg and fill req with everything the transport needs:
 * method, URL (base_url + path), Authorization header, body, CA bundle.
 * path is the path and query exactly as sent; body is NULL for a GET.  No
 * network I/O; the strings are palloc'd in the current context.  A signing
 * failure is a configuration problem (WX001): nothing has been sent.
 */
void
wxpay_request_sign(const WxpayConfig *cfg, const char *method,
				   const char *path, const char *body, size_t body_len,
				   WxpayHttpRequest *req)
{
	StringInfoData msg;
	char		nonce[WXPAY_NONCE_LEN + 1];
	char		ts[32];
	char	   *signature;
	WxpayKeyError err;

	snprintf(ts, sizeof(ts), "%lld", (long long) time(NULL));
	wxpay_make_nonce(nonce);

	initStringInfo(&msg);
	appendStringInfo(&msg, "%s\n%s\n%s\n%s\n", method, path, ts, nonce);
	if (body != NULL)
		appendBinaryStringInfo(&msg, body, body_len);
	appendStringInfoChar(&msg, '\n');

	signature = wxpay_sign_base64(cfg->private_key, msg.data, msg.len, &err);
	if (signature == NULL)
	{
		/* err.msg starts lower-case; a detail is a sentence */
		err.msg[0] = pg_toupper((unsigned char) err.msg[0]);
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("could not sign the request with the private key of wxpay configuration \"%s\"", cfg->name),
				 errdetail_internal("%s: %s.", err.msg, err.lib)));
	}

	/* answers are converted without a transaction later (the worker) */
	wxpay_encoding_prepare();

	memset(req, 0, sizeof(WxpayHttpRequest));
	req->method = method;
	req->url = psprintf("%s%s", cfg->base_url, path);
	req->backup_url = cfg->backup_base_url ?
		psprintf("%s%s", cfg->backup_base_url, path) : NULL;
	req->authorization =
		psprintf("Authorization: WECHATPAY2-SHA256-RSA2048 mchid=\"%s\",nonce_str=\"%s\","
				 "signature=\"%s\",timestamp=\"%s\",serial_no=\"%s\"",
				 cfg->mchid, nonce, signature, ts, cfg->serial_no);
	req->body = body;
	req->body_len = body != NULL ? body_len : 0;
	req->ca_cert = cfg->ca_cert;
	req->ca_cert_len = cfg->ca_cert_len;

	pfree(msg.data);
	pfree(signature);
}

/*
 * Build and sign the request for call.  No network I/O.  Errors here are
 * configuration problems (WX001): nothing has been sent.
 */
void
wxpay_call_prepare(WxpayCall *call)
{
	const WxpayConfig *cfg = call->cfg;
	StringInfoData path;
	StringInfoData body;

	if (wxpay_config_find_key(cfg, NULL, GetCurrentTimestamp()) == NULL)
		wxpay_config_no_key_error(cfg->name,
								  "No configured platform certificate is in its validity period now.");

	/*
	 * The plan number is checked by every caller; the sub-merchant here, for
	 * all of them (22023).  Neither then needs escaping in a path or query
	 * string.
	 */
	if (call->sub_mchid)
		wxpay_check_sub_mchid_arg(call->sub_mchid);
	initStringInfo(&path);
	appendStringInfoString(&path, call->sub_mchid ?
						   WXPAY_PARTNER_PLAN_PATH : WXPAY_PLAN_PATH);
	appendStringInfoString(&path, call->plan_no);

	if (call->op == WXPAY_OP_STOP)
	{
		appendStringInfoString(&path, "/stop");
		initStringInfo(&body);
		appendStringInfoChar(&body, '{');
		if (call->sub_mchid)
		{
			appendStringInfoString(&body, "\"sub_mchid\":");
			escape_json(&body, call->sub_mchid);
			appendStringInfoChar(&body, ',');
		}
		appendStringInfoString(&body, "\"stop_reason\":");
		escape_json(&body, call->stop_reason);
		appendStringInfoChar(&body, '}');
		wxpay_request_sign(cfg, "POST", path.data, body.data, body.len,
						   &call->req);
	}
	else
	{
		if (call->sub_mchid)
			appendStringInfo(&path, "?sub_mchid=%s", call->sub_mchid);
		wxpay_request_sign(cfg, "GET", path.data, NULL, 0, &call->req);
	}

	pfree(path.data);
}

/*
 * The checks on an answer's Wechatpay-* headers that come before the
 * signature: all four exactly once, none overlong, and a timestamp within
 * WXPAY_MAX_CLOCK_SKEW_SECS of our clock.  False with *why on failure.
 */
bool
wxpay_answer_check_headers(WxpayHttpRequest *req, char **why)
{
	WxpayHeaderValue *hs[4] = {&req->h_timestamp, &req->h_nonce,
	&req->h_signature, &req->h_serial};
	static const char *const names[4] = {"Wechatpay-Timestamp", "Wechatpay-Nonce",
	"Wechatpay-Signature", "Wechatpay-Serial"};
	int64		ts;
	int64		now = (int64) time(NULL);

	for (int i = 0; i < 4; i++)
	{
		if (hs[i]->count == 0)
		{
			*why = psprintf("the %s header is missing", names[i]);
			return false;
		}
		if (hs[i]->count > 1)
		{
			*why = psprintf("the %s header came more than once", names[i]);
			return false;
		}
		if (hs[i]->overlong)
		{
			*why = psprintf("the %s header is too long or not text", names[i]);
			return false;
		}
	}

	if (!wxpay_parse_unix_seconds(req->h_timestamp.value, req->h_timestamp.len, &ts))
	{
		*why = pstrdup("the Wechatpay-Timestamp header is not a Unix time");
		return false;
	}
	if (ts - now >= WXPAY_MAX_CLOCK_SKEW_SECS || now - ts >= WXPAY_MAX_CLOCK_SKEW_SECS)
	{
		*why = psprintf("the Wechatpay-Timestamp is %lld seconds away from the database server's clock",
						(long long) (ts > now ? ts - now : now - ts));
		return false;
	}
	return true;
}

/*
 * Whether key signed the answer: "timestamp\nnonce\nbody\n".  Call only after
 * wxpay_answer_check_headers() succeeded.
 */
bool
wxpay_answer_check_signature(WxpayHttpRequest *req, EVP_PKEY *key)
{
	StringInfoData msg;
	bool		ok;

	initStringInfo(&msg);
	appendStringInfo(&msg, "%s\n%s\n", req->h_timestamp.value, req->h_nonce.value);
	appendBinaryStringInfo(&msg, req->resp ? req->resp : "", req->resp_len);
	appendStringInfoChar(&msg, '\n');
	ok = wxpay_verify_base64(key, msg.data, msg.len,
							 req->h_signature.value, req->h_signature.len);
	pfree(msg.data);
	return ok;
}

/*
 * Verify an answer with the keys of cfg (the contract in the header
 * comment); false with *why on any failure.
 */
bool
wxpay_answer_verify(const WxpayConfig *cfg, WxpayHttpRequest *req, char **why)
{
	const WxpayVerifyKey *key;

	if (!wxpay_answer_check_headers(req, why))
		return false;

	key = wxpay_config_find_key(cfg, req->h_serial.value, GetCurrentTimestamp());
	if (key == NULL)
	{
		*why = psprintf("no usable key of wxpay configuration \"%s\" has serial \"%s\"",
						cfg->name, wxpay_from_utf8(req->h_serial.value,
												   req->h_serial.len, false, NULL));
		return false;
	}
	if (!wxpay_answer_check_signature(req, key->pkey))
	{
		*why = pstrdup("the signature does not match the answer");
		return false;
	}
	return true;
}

/* ----------------------------------------------------------------
 *		The one classifier and the one reporter
 *
 * Every request this extension sends (stop, query, batch, queue worker,
 * certificate refresh, live check) is judged by wxpay_classify_attempt()
 * alone, and every failure reaches the user through wxpay_report() (an
 * ERROR, WARNING or LOG) or wxpay_report_text() (a row's error_message),
 * so the same words arrive whichever door the user came through.
 * ----------------------------------------------------------------
 */

/* The primary message of a failed attempt: whole strings, one per kind. */
static char *
AttemptMessage(const WxpayAttempt *a)
{
	switch (a->op)
	{
		case WXPAY_OP_STOP:
			if (a->sub_mchid)
				return psprintf("could not stop sign plan \"%s\" of sub-merchant \"%s\"",
								a->subject, a->sub_mchid);
			return psprintf("could not stop sign plan \"%s\"", a->subject);
		case WXPAY_OP_QUERY:
			if (a->sub_mchid)
				return psprintf("could not query sign plan \"%s\" of sub-merchant \"%s\"",
								a->subject, a->sub_mchid);
			return psprintf("could not query sign plan \"%s\"", a->subject);
		case WXPAY_OP_CERTIFICATES:
			return psprintf("could not refresh the platform certificates of wxpay configuration \"%s\"",
							a->subject);
		case WXPAY_OP_CHECK:
			return psprintf("the live check of wxpay configuration \"%s\" failed",
							a->subject);
	}
	return NULL;				/* keep compiler quiet */
}

/* The operator learns that the main domain is unreachable: one LOG line. */
static void
AttemptLogFailover(const WxpayAttempt *a)
{
	WxpayHttpRequest *req = a->req;
	char	   *primary_err = wxpay_from_utf8(req->primary_errbuf,
											  strlen(req->primary_errbuf),
											  false, NULL);

#define FAILOVER_DETAIL \
	errdetail_internal("Connecting to %s failed: %s.", a->base_url, primary_err)

	switch (a->op)
	{
		case WXPAY_OP_STOP:
			if (a->sub_mchid)
				ereport(LOG,
						(errmsg("sent the stop of sign plan \"%s\" of sub-merchant \"%s\" to the backup domain %s because %s could not be reached",
								a->subject, a->sub_mchid, a->backup_base_url, a->base_url),
						 FAILOVER_DETAIL));
			else
				ereport(LOG,
						(errmsg("sent the stop of sign plan \"%s\" to the backup domain %s because %s could not be reached",
								a->subject, a->backup_base_url, a->base_url),
						 FAILOVER_DETAIL));
			break;
		case WXPAY_OP_QUERY:
			if (a->sub_mchid)
				ereport(LOG,
						(errmsg("sent the query of sign plan \"%s\" of sub-merchant \"%s\" to the backup domain %s because %s could not be reached",
								a->subject, a->sub_mchid, a->backup_base_url, a->base_url),
						 FAILOVER_DETAIL));
			else
				ereport(LOG,
					(errmsg("sent the query of sign plan \"%s\" to the backup domain %s because %s could not be reached",
							a->subject, a->backup_base_url, a->base_url),
					 FAILOVER_DETAIL));
			break;
		case WXPAY_OP_CERTIFICATES:
			ereport(LOG,
					(errmsg("sent the platform certificate download of wxpay configuration \"%s\" to the backup domain %s because %s could not be reached",
							a->subject, a->backup_base_url, a->base_url),
					 FAILOVER_DETAIL));
			break;
		case WXPAY_OP_CHECK:
			ereport(LOG,
					(errmsg("sent the live check of wxpay configuration \"%s\" to the backup domain %s because %s could not be reached",
							a->subject, a->backup_base_url, a->base_url),
					 FAILOVER_DETAIL));
			break;
	}
#undef FAILOVER_DETAIL
}

/* What to do after an outcome that may or may not have taken effect. */
static const char *
AttemptUnknownHint(const WxpayAttempt *a)
{
	switch (a->op)
	{
		case WXPAY_OP_STOP:
			return "Query the sign plan to learn whether it was stopped before retrying.";
		case WXPAY_OP_CERTIFICATES:
			return "Retrying is safe: a download changes nothing. The certificates already held stay in use.";
		case WXPAY_OP_QUERY:
		case WXPAY_OP_CHECK:
			break;
	}
	return "Retrying is safe: a query changes nothing.";
}

/*
 * Mark res as failed; the reader of a verified answer uses this too.  The
 * classifier completes the report afterwards (message, where the request
 * went, Request-ID).
 */
void
wxpay_result_fail(WxpayCallResult *res, int sqlstate, const char *detail,
				  const char *hint)
{
	res->ok = false;
	res->tuple = NULL;
	res->sqlstate = sqlstate;
	res->detail = pstrdup(detail);
	res->hint = hint ? pstrdup(hint) : NULL;
}

/* The detail of an answer that is not 2xx, and its SQLSTATE and hint. */
static void
AttemptErrorAnswer(const WxpayAttempt *a, WxpayCallResult *res)
{
	WxpayHttpRequest *req = a->req;
	StringInfoData detail;
	bool		rejected = req->status >= 400 && req->status < 500;
	const char *code;
	const char *hint;

	wxpay_error_body(req->resp, req->resp_len, &res->error_code, &res->error_message);
	code = res->error_code;

	initStringInfo(&detail);
	appendStringInfo(&detail, "WeChat Pay answered HTTP %ld", req->status);
	if (code)
		appendStringInfo(&detail, " with code \"%s\"", code);
	if (res->error_message)
		appendStringInfo(&detail, ": %s", res->error_message);
	else if (req->resp_len == 0)
		appendStringInfoString(&detail, " with an empty body");
	else if (code == NULL)
		appendStringInfoString(&detail, " with a body that is not a WeChat Pay error");
	appendStringInfoChar(&detail, '.');

	if (!rejected)
	{
		if (a->op == WXPAY_OP_STOP)
			appendStringInfoString(&detail, " The outcome is unknown.");
		hint = AttemptUnknownHint(a);
	}
	else if (req->status == 429)
		hint = "WeChat Pay limits the request rate; retry later with backoff.";
	else if (code && strcmp(code, "SIGN_ERROR") == 0)
		hint = "Check mchid, serial_no and private_key in wxpay_config, and the database server's clock; wxpay_check_config(config_name, live => true) tells which.";
	else if (a->op == WXPAY_OP_CERTIFICATES && req->status == 404 && code &&
			 (strcmp(code, "RESOURCE_NOT_EXISTS") == 0 || strcmp(code, "NOT_FOUND") == 0))
		hint = "WeChat Pay has no platform certificates for merchants in public-key mode: set wechatpay_public_key_id and wechatpay_public_key instead.";
	else if (a->op == WXPAY_OP_STOP)
		hint = "The sign plan was not stopped by this call.";
	else if (a->op == WXPAY_OP_CERTIFICATES)
		hint = "The certificates already held stay in use.";
	else
		hint = NULL;

	wxpay_result_fail(res, rejected ? ERRCODE_WXPAY_REQUEST_REJECTED :
					  ERRCODE_WXPAY_OUTCOME_UNKNOWN, detail.data, hint);
	pfree(detail.data);
}

/*
 * Classify one finished attempt: the only place where an outcome is
 * decided (WX004 not sent, WX002 rejected, WX003 unknown, or ok).  Returns
 * res->ok.  A verified 2xx answer goes to a->read when set.  Logs a
 * failover.  All text in res is in the database encoding.
 */
bool
wxpay_classify_attempt(const WxpayAttempt *a, WxpayCallResult *res)
{
	WxpayHttpRequest *req = a->req;
	const char *main_url = a->base_url;
	char	   *errbuf;
	char	   *why = NULL;
	bool		as_stop_or_query = a->op == WXPAY_OP_STOP || a->op == WXPAY_OP_QUERY;

	memset(res, 0, sizeof(WxpayCallResult));
	res->http_status = req->status;
	res->failed_over = req->failed_over;
	res->sent_to = req->outcome == WXPAY_TRANSPORT_NOT_SENT ? NULL :
		req->failed_over ? a->backup_base_url : a->base_url;
	if (req->h_request_id.count > 0 && !req->h_request_id.overlong)
		res->request_id = wxpay_from_utf8(req->h_request_id.value,
										  req->h_request_id.len, false, NULL);
	errbuf = wxpay_from_utf8(req->errbuf, strlen(req->errbuf), false, NULL);

	if (req->failed_over)
		AttemptLogFailover(a);

	if (req->outcome == WXPAY_TRANSPORT_NOT_SENT)
	{
		const char *hint = a->op == WXPAY_OP_CERTIFICATES ?
			"Nothing reached WeChat Pay, so retrying is safe. The certificates already held stay in use." :
			"Nothing reached WeChat Pay, so retrying is safe.";

		if (req->failed_over)
			wxpay_result_fail(res, ERRCODE_WXPAY_REQUEST_NOT_SENT,
							  psprintf("Nothing was sent to %s: %s. Nothing was sent to the backup domain %s either: %s.",
									   main_url,
									   wxpay_from_utf8(req->primary_errbuf,
													   strlen(req->primary_errbuf),
													   false, NULL),
									   a->backup_base_url, errbuf),
							  hint);
		else
			wxpay_result_fail(res, ERRCODE_WXPAY_REQUEST_NOT_SENT,
							  psprintf("Nothing was sent to %s: %s.", main_url, errbuf),
							  hint);
	}
	else if (req->outcome == WXPAY_TRANSPORT_FAILED)
	{
		char	   *detail;

		if (req->too_large)
			detail = psprintf("The answer exceeded the limit of %d bytes, so the outcome is unknown.",
							  WXPAY_MAX_RESPONSE_BYTES);
		else if (req->timed_out)
			detail = psprintf("No complete answer arrived within wxpay.request_timeout (%d ms) after the request was sent, so the outcome is unknown: %s.",
							  wxpay_request_timeout, errbuf);
		else
			detail = psprintf("The connection failed after the request was sent, so the outcome is unknown: %s.",
							  errbuf);
		wxpay_result_fail(res, ERRCODE_WXPAY_OUTCOME_UNKNOWN, detail,
						  AttemptUnknownHint(a));
	}
	else if (req->status < 200 || req->status >= 300)
		AttemptErrorAnswer(a, res);
	else if (a->verify_cfg != NULL && !wxpay_answer_verify(a->verify_cfg, req, &why))
		wxpay_result_fail(res, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
						  psprintf(as_stop_or_query ?
								   "WeChat Pay's answer (HTTP %ld) failed verification: %s. It was not trusted, so the outcome is unknown." :
								   "WeChat Pay's answer (HTTP %ld) failed verification: %s. It was not trusted.",
								   req->status, why),
						  AttemptUnknownHint(a));
	else if (a->read != NULL)
	{
		res->sqlstate = 0;
		if (a->read(a->read_arg, req, res, &why))
			res->ok = true;
		else if (res->sqlstate == 0)
			wxpay_result_fail(res, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
							  psprintf("WeChat Pay's verified answer (HTTP %ld) could not be read: %s.",
									   req->status, why),
							  AttemptUnknownHint(a));
	}
	else
		res->ok = true;

	if (res->ok)
		return true;

	/* complete the report: what failed, where it went, the Request-ID */
	res->classified = true;
	res->message = AttemptMessage(a);
	if (req->failed_over && res->sqlstate != ERRCODE_WXPAY_REQUEST_NOT_SENT)
		res->detail = psprintf("%s The request went to the backup domain %s because connecting to %s failed.",
							   res->detail, a->backup_base_url, main_url);
	if (res->request_id)
		res->detail = psprintf("%s Request-ID: %s.", res->detail, res->request_id);
	return false;
}

/*
 * The one reporter: a failed result as an ereport at elevel (ERROR does
 * not return).  Modelled on postgres_fdw's pgfdw_report_error: the
 * classifier's words go out unchanged, only the level differs by door.
 */
void
wxpay_report(const WxpayCallResult *res, int elevel)
{
	Assert(!res->ok);
	ereport(elevel,
			(errcode(res->sqlstate),
			 errmsg_internal("%s", res->message),
			 res->detail ? errdetail_internal("%s", res->detail) : 0,
			 res->hint ? errhint("%s", res->hint) : 0));
}

/*
 * The same report as one text, for a row's error_message (batch rows, the
 * queue).  A classified attempt's primary message only names the operation
 * and the plan, which the row shows itself: its text is the detail.  Any
 * other failure (an error caught while preparing) keeps its primary
 * message in front of the detail.
 */
char *
wxpay_report_text(const WxpayCallResult *res)
{
	if (res->classified && res->detail)
		return pstrdup(res->detail);
	if (res->detail)
		return psprintf("%s: %s", res->message, res->detail);
	return pstrdup(res->message);
}

/* Stop and query: the verified answer as a row of tupdesc. */
typedef struct CallReadArg
{
	WxpayCall  *call;
	TupleDesc	tupdesc;
} CallReadArg;

static bool
CallRead(void *arg, WxpayHttpRequest *req, WxpayCallResult *res, char **why)
{
	CallReadArg *ca = (CallReadArg *) arg;
	TupleDesc	tupdesc = ca->tupdesc;
	WxpayCall  *call = ca->call;
	Jsonb	   *jb;
	Datum	   *values;
	bool	   *nulls;

	jb = wxpay_parse_jsonb(req->resp, req->resp_len, why);
	if (jb == NULL)
		return false;
	if (!JsonContainerIsObject(&jb->root))
	{
		*why = pstrdup("it is not a JSON object");
		return false;
	}
	if (!CallAnswerField(&jb->root, "merchant_sign_plan_no", call->plan_no))
	{
		*why = pstrdup("it is about another sign plan");
		return false;
	}
	if (call->sub_mchid &&
		!CallAnswerField(&jb->root, "sub_mchid", call->sub_mchid))
	{
		*why = psprintf("it is about a sign plan of another sub-merchant than \"%s\"",
						call->sub_mchid);
		return false;
	}
	values = palloc(sizeof(Datum) * tupdesc->natts);
	nulls = palloc(sizeof(bool) * tupdesc->natts);
	if (!wxpay_container_to_tuple(&jb->root, tupdesc, values, nulls, why))
		return false;
	res->tuple = heap_form_tuple(tupdesc, values, nulls);
	return true;
}

/*
 * Whether the answer object's key, when present, is the string want.  An
 * absent key passes (the platform leaves fields out); anything else fails.
 */
static bool
CallAnswerField(JsonbContainer *obj, const char *key, const char *want)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);

	if (v == NULL)
		return true;
	return v->type == jbvString &&
		(size_t) v->val.string.len == strlen(want) &&
		memcmp(v->val.string.val, want, v->val.string.len) == 0;
}

/*
 * Classify a finished stop or query.  Returns true with res->tuple built
 * from the verified answer, or false with res describing the failure.
 */
bool
wxpay_call_finish(WxpayCall *call, TupleDesc tupdesc, WxpayCallResult *res)
{
	WxpayAttempt a;
	CallReadArg ca;

	ca.call = call;
	ca.tupdesc = tupdesc;
	memset(&a, 0, sizeof(a));
	a.op = call->op;
	a.subject = call->plan_no;
	a.sub_mchid = call->sub_mchid;
	a.base_url = call->cfg->base_url;
	a.backup_base_url = call->cfg->backup_base_url;
	a.req = &call->req;
	a.verify_cfg = call->cfg;
	a.read = CallRead;
	a.read_arg = &ca;
	return wxpay_classify_attempt(&a, res);
}
