/*-------------------------------------------------------------------------
 *
 * notify.c
 *	  WeChat Pay's notifications (callbacks): verify who sent one, then
 *	  decrypt its resource with the APIv3 key.
 *
 * Order.  The checks run from the cheapest to the dearest and nothing is
 * parsed or decrypted before the signature verified: the headers' syntax
 * (protocol.c, the same pure code the fuzzer runs), the timestamp against
 * this server's clock, the key that Wechatpay-Serial names, the RSA
 * signature over "timestamp\nnonce\nbody\n", then the body's JSON, the
 * algorithm, the APIv3 key and the AES-256-GCM tag.  Each refusal is an
 * ERROR with its own SQLSTATE (WX010 to WX019, doc/reference.md) whose
 * message names the check that failed.  The body's size (at most
 * WXPAY_MAX_NOTIFICATION_BYTES) is checked by the SQL entry point before
 * the argument is even detoasted.
 *
 * Bytes.  The signature covers the body's exact UTF-8 bytes.  The body
 * arrives as SQL text in the database encoding; wxpay_to_utf8() (encoding.c)
 * gives back the caller's bytes unchanged in UTF-8 and SQL_ASCII databases
 * and the exact UTF-8 in others.  The parsed body and the decrypted
 * resource go through wxpay_parse_jsonb(), so their text is in the database
 * encoding like every answer's (characters the database lacks as \uXXXX).
 *
 * Keys.  The verification keys are the config's (config.c: the WeChat Pay
 * public key, or the platform certificates held, each inside its validity
 * period).  An unknown serial in certificate mode is refused with a hint
 * to run wxpay_refresh_platform_certificates(): a refresh here would be a
 * network call inside the caller's transaction, while it may hold locks.
 * WeChat Pay delivers the notification again later.
 *
 * Secrets.  The APIv3 key is read last, into a stack buffer zeroed before
 * returning, error or not (PG_FINALLY).  Plaintext whose tag fails is
 * zeroed by sign.c and never seen here; the decrypted text of a resource
 * that cannot be used is never quoted in an error (jsonb_in's message
 * would quote it), and it is zeroed once parsed.  No message carries the
 * signature or a key.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

/* local state: the saved plan that reads the APIv3 key, and its schema */
static SPIPlanPtr NotifyKeyPlan = NULL;
static Oid	NotifyKeyPlanNsp = InvalidOid;

static void NotifyHeaders(Jsonb *headers, WxpayNotifyHeaders *nh);
static void NotifyStoreValue(WxpayHeaderValue *h, JsonbValue *v);
WXPAY_NORETURN static void NotifyHeaderError(WxpayNotifyCheck check,
											 WxpayNotifyHeaders *nh);
static char *NotifyField(JsonbContainer *obj, const char *key,
						 bool required, const char *what);
static bool NotifyReadApiv3Key(const char *config_name, Oid nspoid,
							   unsigned char *key);

/*
 * Collect the notification headers of a JSON object of headers: a value
 * is a string, or an array of strings (a header that came several times).
 * Names match whatever their case; other headers are ignored.
 */
static void
NotifyHeaders(Jsonb *headers, WxpayNotifyHeaders *nh)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			which = -1;

	memset(nh, 0, sizeof(*nh));
	if (!JB_ROOT_IS_OBJECT(headers) || JB_ROOT_IS_SCALAR(headers))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_HEADERS),
				 errmsg("notification headers are not a JSON object"),
				 errhint("Pass the request's headers as a jsonb object of header names and values.")));

	it = JsonbIteratorInit(&headers->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			which = wxpay_notify_header(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && which >= 0)
		{
			WxpayHeaderValue *h = &nh->h[which];

			if (v.type == jbvBinary && JsonContainerIsArray(v.val.binary.data))
			{
				JsonbIterator *ait = JsonbIteratorInit(v.val.binary.data);
				JsonbValue	e;
				JsonbIteratorToken atok;

				while ((atok = JsonbIteratorNext(&ait, &e, true)) != WJB_DONE)
				{
					if (atok == WJB_ELEM)
						NotifyStoreValue(h, &e);
				}
			}
			else
				NotifyStoreValue(h, &v);
			which = -1;
		}
	}
}

/* One value of a header: a string in UTF-8, anything else not text. */
static void
NotifyStoreValue(WxpayHeaderValue *h, JsonbValue *v)
{
	char	   *utf8;
	size_t		len;

	if (v->type != jbvString)
	{
		h->count++;
		h->overlong = true;
		return;
	}
	utf8 = wxpay_to_utf8(v->val.string.val, v->val.string.len, &len);
	wxpay_store_header(h, utf8, len);
}

/* A header check failed: its error, naming the header. */
static void
NotifyHeaderError(WxpayNotifyCheck check, WxpayNotifyHeaders *nh)
{
	const char *name = wxpay_notify_header_name(nh->failed);

	switch (check)
	{
		case WXPAY_NOTIFY_MISSING:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_HEADERS),
					 errmsg("notification header \"%s\" is missing", name),
					 errhint("Pass every header of the request; names may be in any letter case.")));
			break;
		case WXPAY_NOTIFY_DUPLICATE:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_HEADERS),
					 errmsg("notification header \"%s\" came more than once", name)));
			break;
		case WXPAY_NOTIFY_NOT_TEXT:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_HEADERS),
					 errmsg("notification header \"%s\" is not a string of at most %d bytes",
							name, (int) sizeof(nh->h[0].value) - 1)));
			break;
		case WXPAY_NOTIFY_BAD_TIMESTAMP:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_HEADERS),
					 errmsg("notification header \"%s\" is not a Unix time", name)));
			break;
		case WXPAY_NOTIFY_BAD_NONCE:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_HEADERS),
					 errmsg("notification header \"%s\" is not printable ASCII", name)));
			break;
		case WXPAY_NOTIFY_BAD_TYPE:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_ALGORITHM),
					 errmsg("notification signature type is not %s", WXPAY_SIGNATURE_TYPE),
					 errdetail("The Wechatpay-Signature-Type header names another algorithm.")));
			break;
		case WXPAY_NOTIFY_PROBE:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_PROBE),
					 errmsg("notification is a signature probe"),
					 errdetail("Its Wechatpay-Signature begins with \"%s\": WeChat Pay sends such notifications to test that the merchant verifies signatures.",
							   WXPAY_PROBE_PREFIX),
					 errhint("Answer it with an error status; it carries no event.")));
			break;
		case WXPAY_NOTIFY_BAD_SIGNATURE:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_SIGNATURE),
					 errmsg("notification signature does not verify"),
					 errdetail("The Wechatpay-Signature header is not Base64 of at most %d bytes.",
							   WXPAY_SIGNATURE_MAX)));
			break;
		case WXPAY_NOTIFY_BAD_SERIAL:
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_SERIAL),
					 errmsg("notification signed under an unknown serial"),
					 errdetail("The Wechatpay-Serial header is neither a certificate serial nor a WeChat Pay public key ID.")));
			break;
		case WXPAY_NOTIFY_OK:
			break;
	}
	elog(ERROR, "unexpected notification header check %d", (int) check);
}

/* A string field of the body (database encoding), or NULL when optional. */
static char *
NotifyField(JsonbContainer *obj, const char *key, bool required,
			const char *what)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);

	if ((v == NULL || v->type == jbvNull) && !required)
		return NULL;
	if (v != NULL && v->type == jbvString &&
		(!required || v->val.string.len > 0))
		return pnstrdup(v->val.string.val, v->val.string.len);
	ereport(ERROR,
			(errcode(ERRCODE_WXPAY_NOTIFY_BODY),
			 errmsg("notification body is not a WeChat Pay notification"),
			 errdetail("Field \"%s\" of the %s is missing, empty or not a string.",
					   key, what)));
	return NULL;				/* keep compiler quiet */
}

/*
 * The config's APIv3 key into key (WXPAY_APIV3_KEY_LEN bytes); false when
 * it has none or one of another length.  The text read is zeroed.
 */
static bool
NotifyReadApiv3Key(const char *config_name, Oid nspoid, unsigned char *key)
{
	Datum		arg[1];
	Oid			argtype[1] = {TEXTOID};
	bool		found = false;
	int			rc;

	arg[0] = CStringGetTextDatum(config_name);
	wxpay_spi_connect();
	/* one saved plan per process (the plan cache replans it when needed) */
	if (NotifyKeyPlan == NULL || NotifyKeyPlanNsp != nspoid)
	{
		SPIPlanPtr	plan;

		plan = SPI_prepare(psprintf("SELECT apiv3_key FROM %s.wxpay_config "
									"WHERE name OPERATOR(pg_catalog.=) $1",
									wxpay_schema_quoted(nspoid)),
						   1, argtype);
		if (plan == NULL)
			wxpay_spi_error("SPI_prepare", SPI_result);
		if (SPI_keepplan(plan) != 0)
			elog(ERROR, "SPI_keepplan failed");
		if (NotifyKeyPlan != NULL)
			SPI_freeplan(NotifyKeyPlan);
		NotifyKeyPlan = plan;
		NotifyKeyPlanNsp = nspoid;
	}
	rc = SPI_execute_plan(NotifyKeyPlan, arg, NULL, true, 1);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute_plan", rc);
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									  1, &isnull);

		if (!isnull)
		{
			/* sealed at rest (rootkey.c): WX001 when it does not open */
			char	   *stored = TextDatumGetCString(d);
			char	   *raw = wxpay_config_open_secret(config_name, "apiv3_key", stored);
			size_t		n;
			char	   *s = wxpay_trim_space(raw, &n);

			explicit_bzero(stored, strlen(stored));
			pfree(stored);

			if (n == WXPAY_APIV3_KEY_LEN)
			{
				memcpy(key, s, WXPAY_APIV3_KEY_LEN);
				found = true;
			}
			wxpay_secret_free(raw);
		}
	}
	SPI_finish();
	return found;
}

/*
 * Verify and decrypt one notification for config config_name (schema
 * nspoid).  body is the request body as SQL text (database encoding),
 * headers a JSON object of the request's headers.  Fills *out or raises
 * one of the errors listed in the header comment.
 */
void
wxpay_notify_verify(const char *config_name, Oid nspoid, Jsonb *headers,
					const char *body, size_t body_len, WxpayNotification *out)
{
	WxpayNotifyHeaders nh;
	WxpayNotifyCheck check;
	int64		now = (int64) time(NULL);
	int64		skew;
	const WxpayConfig *cfg;
	const WxpayVerifyKey *key;
	char	   *utf8;
	size_t		utf8_len;
	StringInfoData msg;
	bool		verified;
	char	   *why = NULL;
	Jsonb	   *jb;
	JsonbValue *rv;
	JsonbContainer *res = NULL;
	char	   *create_time;
	char	   *algorithm;
	char	   *ciphertext;
	char	   *nonce;
	char	   *aad;
	unsigned char *raw;
	size_t		rawcap;
	size_t		rawlen;
	char	   *nonce8;
	size_t		nonce8_len;
	char	   *aad8;
	size_t		aad8_len;
	unsigned char apiv3[WXPAY_APIV3_KEY_LEN];
	char	   *volatile plain = NULL;
	volatile size_t plain_len = 0;
	WxpayKeyError err;

	memset(out, 0, sizeof(*out));
	memset(&err, 0, sizeof(err));

	/* the headers: syntax, probe, timestamp */
	NotifyHeaders(headers, &nh);
	check = wxpay_notify_check_headers(&nh);
	if (check != WXPAY_NOTIFY_OK)
		NotifyHeaderError(check, &nh);
	skew = nh.timestamp > now ? nh.timestamp - now : now - nh.timestamp;
	if (skew > WXPAY_MAX_CLOCK_SKEW_SECS)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_STALE),
				 errmsg("notification timestamp is %lld seconds away from the database server's clock",
						(long long) skew),
				 errdetail("At most %d seconds are accepted, so that a recorded notification cannot be replayed later.",
						   WXPAY_MAX_CLOCK_SKEW_SECS),
				 errhint("Check the database server's clock if every notification is refused so.")));

	/* the key that Wechatpay-Serial names */
	cfg = wxpay_config_get_signing(config_name, nspoid);
	key = wxpay_config_find_key(cfg, nh.h[WXPAY_NH_SERIAL].value,
								GetCurrentTimestamp());
	if (key == NULL)
	{
		if (wxpay_check_pubkey_id(nh.h[WXPAY_NH_SERIAL].value))
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_SERIAL),
					 errmsg("notification signed under an unknown serial \"%s\"",
							nh.h[WXPAY_NH_SERIAL].value),
					 errdetail("wxpay configuration \"%s\" has no WeChat Pay public key of that ID.",
							   config_name),
					 errhint("Check wechatpay_public_key_id and wechatpay_public_key of the configuration.")));
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_SERIAL),
				 errmsg("notification signed under an unknown serial \"%s\"",
						nh.h[WXPAY_NH_SERIAL].value),
				 errdetail("wxpay configuration \"%s\" holds no platform certificate of that serial valid now.",
						   config_name),
				 errhint("Run SELECT * FROM wxpay_refresh_platform_certificates(%s) in a transaction of its own (it calls WeChat Pay); WeChat Pay delivers the notification again later.",
						 quote_literal_cstr(config_name))));
		return;					/* keep cppcheck quiet */
	}

	/* the signature over the body's exact bytes */
	utf8 = wxpay_to_utf8(body, body_len, &utf8_len);
	initStringInfo(&msg);
	appendStringInfo(&msg, "%s\n%s\n", nh.h[WXPAY_NH_TIMESTAMP].value,
					 nh.h[WXPAY_NH_NONCE].value);
	appendBinaryStringInfo(&msg, utf8, (int) utf8_len);
	appendStringInfoChar(&msg, '\n');
	verified = wxpay_verify_base64(key->pkey, msg.data, msg.len,
								   nh.h[WXPAY_NH_SIGNATURE].value,
								   nh.h[WXPAY_NH_SIGNATURE].len);
	pfree(msg.data);
	if (!verified)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_SIGNATURE),
				 errmsg("notification signature does not verify"),
				 errdetail("The signature is not WeChat Pay's over the timestamp, the nonce and the body under key \"%s\".",
						   key->serial),
				 errhint("Pass the request body byte for byte as it arrived: any re-serialisation of the JSON breaks the signature.")));

	/* the body: the documented JSON */
	jb = wxpay_parse_jsonb(utf8, utf8_len, &why);
	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_BODY),
				 errmsg("notification body is not a WeChat Pay notification"),
				 jb == NULL ? errdetail_internal("%s.", why) :
				 errdetail("The body is not a JSON object.")));
	out->id = NotifyField(&jb->root, "id", true, "body");
	create_time = NotifyField(&jb->root, "create_time", true, "body");
	if (!wxpay_parse_rfc3339(create_time, strlen(create_time), &out->create_time))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_BODY),
				 errmsg("notification body is not a WeChat Pay notification"),
				 errdetail("Field \"create_time\" is not an RFC 3339 time.")));
	out->event_type = NotifyField(&jb->root, "event_type", true, "body");
	out->resource_type = NotifyField(&jb->root, "resource_type", true, "body");
	out->summary = NotifyField(&jb->root, "summary", false, "body");
	rv = getKeyJsonValueFromContainer(&jb->root, "resource", 8, NULL);
	if (rv == NULL || rv->type != jbvBinary ||
		!JsonContainerIsObject(rv->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_BODY),
				 errmsg("notification body is not a WeChat Pay notification"),
				 errdetail("Field \"resource\" is missing or not a JSON object.")));
	else
		res = rv->val.binary.data;
	algorithm = NotifyField(res, "algorithm", true, "resource");
	if (strcmp(algorithm, "AEAD_AES_256_GCM") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_ALGORITHM),
				 errmsg("notification resource algorithm \"%s\" is not supported", algorithm),
				 errdetail("Only AEAD_AES_256_GCM is supported.")));
	ciphertext = NotifyField(res, "ciphertext", true, "resource");
	nonce = NotifyField(res, "nonce", true, "resource");
	aad = NotifyField(res, "associated_data", false, "resource");
	if (aad == NULL)
		aad = "";
	rawcap = strlen(ciphertext) / 4 * 3 + 3;
	raw = palloc(rawcap);
	if (!wxpay_base64_decode(ciphertext, strlen(ciphertext), raw, rawcap, &rawlen))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_BODY),
				 errmsg("notification body is not a WeChat Pay notification"),
				 errdetail("Field \"ciphertext\" of the resource is not Base64.")));
	nonce8 = wxpay_to_utf8(nonce, strlen(nonce), &nonce8_len);
	aad8 = wxpay_to_utf8(aad, strlen(aad), &aad8_len);

	/* the APIv3 key, last; zeroed whatever happens */
	PG_TRY();
	{
		if (!NotifyReadApiv3Key(config_name, nspoid, apiv3))
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_NOTIFY_NO_APIV3),
					 errmsg("wxpay configuration \"%s\" has no usable apiv3_key", config_name),
					 errdetail("WeChat Pay encrypts a notification's resource with the APIv3 key; the configuration has none of %d bytes.",
							   WXPAY_APIV3_KEY_LEN),
					 errhint("Set apiv3_key to the APIv3 key chosen on the merchant platform.")));
		plain = wxpay_aes256gcm_decrypt(apiv3, sizeof(apiv3), nonce8, nonce8_len,
										aad8, aad8_len, raw, rawlen,
										(size_t *) &plain_len, &err);
	}
	PG_FINALLY();
	{
		explicit_bzero(apiv3, sizeof(apiv3));
	}
	PG_END_TRY();
	if (plain == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_DECRYPT),
				 errmsg("notification resource could not be decrypted"),
				 errdetail("AES-256-GCM refused it: %s.", err.msg),
				 errhint("Check that apiv3_key is the APIv3 key set on the merchant platform.")));

	/* the plaintext: a JSON object, never quoted in an error */
	if (strlen(plain) != plain_len)
		jb = NULL;
	else
	{
		jb = wxpay_parse_jsonb(plain, plain_len, &why);
		if (why)
			pfree(why);
	}
	explicit_bzero(plain, plain_len);
	pfree(plain);
	if (jb == NULL || !JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_NOTIFY_BODY),
				 errmsg("notification resource is not a JSON object"),
				 errdetail("The resource decrypted, but its text is not a JSON object; it is not shown.")));
	out->resource = jb;
}
