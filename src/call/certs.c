/*-------------------------------------------------------------------------
 *
 * certs.c
 *	  WeChat Pay platform certificates: download them (GET /v3/certificates),
 *	  decrypt them with the APIv3 key, check who signed the answer, and keep
 *	  wxpay_platform_certificate current.
 *
 * Phases.  A refresh is split in three (see wxpay_signplan.h) so that the
 * background worker never holds a transaction open across network I/O:
 * prepare (catalog reads, signing), send (network only), finish (verify,
 * decrypt, write).  The SQL function wxpay_refresh_platform_certificates()
 * runs the same three in one transaction.  Whatever later phases need is
 * copied into the caller's memory context by the first: the WxpayConfig
 * that signed the request belongs to config.c's cache and may be gone by
 * then.
 *
 * Trust.  The certificates are encrypted with AES-256-GCM under the APIv3
 * key, which only the merchant and WeChat Pay know, so a certificate whose
 * tag verifies comes from WeChat Pay.  The answer must also be signed, by
 * one of the certificates it carries or by one already held, valid now;
 * all four Wechatpay-* headers and the timestamp are checked as for any
 * answer (call.c).  Only then is anything written: a failed refresh changes
 * nothing, so the certificates already held stay in use.
 *
 * Rotation.  WeChat Pay announces a new certificate before it starts
 * signing with it and keeps the old one valid meanwhile.  A refresh adds
 * and updates the certificates of the answer and leaves the others alone
 * until they expire; then it deletes them.  Certificates already expired
 * in the answer are not stored.
 *
 * Secrets.  The APIv3 key is read in the last phase only, kept in a stack
 * buffer and zeroed before returning, error or not.  Plaintext that fails
 * its tag is zeroed by sign.c and never seen here.  OpenSSL objects made
 * here are freed in PG_FINALLY.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "wxpay_signplan.h"

/* settings (defined in CertsInit) */
int			wxpay_certificate_refresh_interval = 12 * 3600;	/* s */

#define CERTS_PATH		"/v3/certificates"
/* the end of every hint about a failed refresh */
#define CERTS_HELD	"The certificates already held stay in use."

/* One certificate held before the refresh, or one from the answer. */
typedef struct CertsEntry
{
	char	   *serial;			/* upper-case hex */
	char	   *pem;			/* the answer's plaintext; NULL when held */
	EVP_PKEY   *pkey;			/* NULL when unparsable */
	TimestampTz not_before;		/* the tighter of certificate and row/answer */
	TimestampTz not_after;
	TimestampTz row_effective;	/* what the row or answer says */
	TimestampTz row_expire;
	bool		row_effective_null;
	bool		row_expire_null;
} CertsEntry;

typedef struct CertsWork
{
	int			nheld;
	CertsEntry *held;
	int			nfresh;
	CertsEntry *fresh;
	unsigned char apiv3[WXPAY_APIV3_KEY_LEN];
	bool		have_apiv3;
} CertsWork;

static void CertsFail(WxpayCertRefresh *r, int sqlstate, char *detail,
					  const char *hint);
static bool CertsRead(void *arg, WxpayHttpRequest *req,
					  WxpayCallResult *res, char **why);
static bool CertsReadState(WxpayCertRefresh *r, CertsWork *w);
static bool CertsParseAnswer(WxpayCertRefresh *r, CertsWork *w);
static bool CertsString(JsonbContainer *obj, const char *key, char **out);
static bool CertsCheckSigner(WxpayCertRefresh *r, CertsWork *w);
static void CertsStore(WxpayCertRefresh *r, CertsWork *w);
static void CertsFreeWork(CertsWork *w);

/*
 * Configs whose certificates the worker refreshes: those with an
 * apiv3_key, by name.  In a transaction; the list and the names are
 * palloc'd in the caller's current context.
 */
List *
wxpay_cert_refresh_configs(Oid nspoid)
{
	MemoryContext outer = CurrentMemoryContext;
	List	   *names = NIL;
	char	   *sql;
	int			rc;

	sql = psprintf("SELECT name FROM %s.wxpay_config WHERE apiv3_key IS NOT NULL "
				   "ORDER BY name", wxpay_schema_quoted(nspoid));
	wxpay_spi_connect();
	rc = SPI_execute(sql, false, 0);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute", rc);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		char	   *name = SPI_getvalue(SPI_tuptable->vals[i],
										SPI_tuptable->tupdesc, 1);
		MemoryContext spi = MemoryContextSwitchTo(outer);

		names = lappend(names, pstrdup(name));
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	return names;
}

/*
 * Phase 1, in a transaction: check that the config may download
 * certificates, and build the signed request in cxt.
 */
void
wxpay_cert_refresh_prepare(WxpayCertRefresh *r, const char *config_name,
						   Oid nspoid, MemoryContext cxt)
{
	MemoryContext old;
	const WxpayConfig *cfg;
	Datum		arg[1];
	Oid			argtype[1] = {TEXTOID};
	bool		has_pubkey;
	bool		isnull;
	Datum		d;
	int			rc;
	int			apiv3_len = -1;

	memset(r, 0, sizeof(WxpayCertRefresh));
	r->cxt = cxt;
	r->nspoid = nspoid;

	/* what kind of merchant is this?  (no secret leaves SQL) */
	arg[0] = CStringGetTextDatum(config_name);
	wxpay_spi_connect();
	rc = SPI_execute_with_args(psprintf("SELECT wechatpay_public_key_id IS NOT NULL, apiv3_key "
										"FROM %s.wxpay_config WHERE name OPERATOR(pg_catalog.=) $1",
										wxpay_schema_quoted(nspoid)),
							   1, argtype, arg, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute_with_args", rc);
	if (SPI_processed == 0)
		wxpay_config_missing(config_name);
	has_pubkey = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
											SPI_tuptable->tupdesc, 1, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull);
	if (!isnull)
	{
		/* sealed at rest (rootkey.c): WX001 before anything is sent */
		char	   *stored = TextDatumGetCString(d);
		char	   *raw = wxpay_config_open_secret(config_name, "apiv3_key", stored);
		size_t		len;

		(void) wxpay_trim_space(raw, &len);
		apiv3_len = (int) Min(len, (size_t) INT_MAX);
		wxpay_secret_free(raw);
		pfree(stored);
	}
	SPI_finish();

	if (apiv3_len < 0 && has_pubkey)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("wxpay configuration \"%s\" needs no platform certificates", config_name),
				 errdetail("It verifies WeChat Pay's answers with the WeChat Pay public key (public-key mode), which does not rotate; WeChat Pay has no platform certificates for such merchants."),
				 errhint("Nothing to do. Platform certificates are only for merchants in platform-certificate mode, which also set apiv3_key.")));
	if (apiv3_len < 0)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("wxpay configuration \"%s\" has no apiv3_key", config_name),
				 errdetail("WeChat Pay encrypts the platform certificates with the APIv3 key."),
				 errhint("Set apiv3_key to the APIv3 key chosen on the merchant platform, or use public-key mode (wechatpay_public_key_id and wechatpay_public_key).")));
	if (apiv3_len != WXPAY_APIV3_KEY_LEN)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("wxpay configuration \"%s\" has an invalid apiv3_key", config_name),
				 errdetail("The APIv3 key is %d bytes long; it must be exactly %d.",
						   apiv3_len, WXPAY_APIV3_KEY_LEN)));

	cfg = wxpay_config_get_signing(config_name, nspoid);

	old = MemoryContextSwitchTo(cxt);
	r->config_name = pstrdup(config_name);
	r->base_url = pstrdup(cfg->base_url);
	r->backup_base_url = cfg->backup_base_url ? pstrdup(cfg->backup_base_url) : NULL;
	wxpay_request_sign(cfg, "GET", CERTS_PATH, NULL, 0, &r->req);
	/* the cache owns cfg->ca_cert; the request must not point into it */
	if (cfg->ca_cert != NULL)
		r->req.ca_cert = pnstrdup(cfg->ca_cert, cfg->ca_cert_len);
	r->req.resp_cxt = cxt;
	MemoryContextSwitchTo(old);
}

/* Phase 2: the request itself; no catalog access. */
void
wxpay_cert_refresh_send(WxpayCertRefresh *r)
{
	WxpayHttpRequest *req = &r->req;
	MemoryContext old = MemoryContextSwitchTo(r->cxt);

	wxpay_http_perform(&req, 1, 1);
	MemoryContextSwitchTo(old);
}

/*
 * Fill r->result as a failure (the classifier adds the primary message and
 * the Request-ID), in r's context: the work context is gone by then.
 */
static void
CertsFail(WxpayCertRefresh *r, int sqlstate, char *detail, const char *hint)
{
	MemoryContext old = MemoryContextSwitchTo(r->cxt);

	wxpay_result_fail(&r->result, sqlstate, detail, hint);
	MemoryContextSwitchTo(old);
}

/*
 * The classifier's reader of a 2xx answer: check its headers, decrypt the
 * certificates, check who signed it, store.  True when stored.
 */
static bool
CertsRead(void *arg, WxpayHttpRequest *req, WxpayCallResult *res, char **why)
{
	WxpayCertRefresh *r = (WxpayCertRefresh *) arg;
	MemoryContext work_cxt;
	MemoryContext old;
	CertsWork	w;
	volatile bool stored = false;

	Assert(res == &r->result);
	(void) res;
	(void) why;
	if (!wxpay_answer_check_headers(req, why))
	{
		CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
				  psprintf("WeChat Pay's answer (HTTP %ld) failed verification: %s. It was not trusted.",
						   req->status, *why),
				  CERTS_HELD);
		return false;
	}

	work_cxt = AllocSetContextCreate(CurrentMemoryContext,
									 "wxpay certificate refresh",
									 ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(work_cxt);
	memset(&w, 0, sizeof(w));
	PG_TRY();
	{
		if (CertsReadState(r, &w) &&
			CertsParseAnswer(r, &w) &&
			CertsCheckSigner(r, &w))
		{
			CertsStore(r, &w);
			stored = true;
		}
	}
	PG_FINALLY();
	{
		CertsFreeWork(&w);
		MemoryContextSwitchTo(old);
		MemoryContextDelete(work_cxt);
	}
	PG_END_TRY();
	return stored;
}

/*
 * Phase 3, in a transaction: judge the answer (wxpay_classify_attempt)
 * and, when it is good, store the certificates.  Returns r->result.ok.
 */
bool
wxpay_cert_refresh_finish(WxpayCertRefresh *r)
{
	WxpayAttempt a;
	MemoryContext old;
	bool		ok;

	r->ncerts = 0;
	r->certs = NULL;
	memset(&a, 0, sizeof(a));
	a.op = WXPAY_OP_CERTIFICATES;
	a.subject = r->config_name;
	a.base_url = r->base_url;
	a.backup_base_url = r->backup_base_url;
	a.req = &r->req;
	a.verify_cfg = NULL;		/* the signer may be in the answer */
	a.read = CertsRead;
	a.read_arg = r;

	old = MemoryContextSwitchTo(r->cxt);
	ok = wxpay_classify_attempt(&a, &r->result);
	MemoryContextSwitchTo(old);
	return ok;
}

/*
 * Defines the setting the certificate refresh reads.
 */
void
CertsInit(void)
{
	DefineCustomIntVariable("wxpay.certificate_refresh_interval",
							"Sets how often the background worker downloads the WeChat Pay platform certificates.",
							"Applies to each configuration with an apiv3_key; 0 turns the automatic refresh off. A failed refresh keeps the certificates already held.",
							&wxpay_certificate_refresh_interval,
							12 * 3600, 0, 7 * 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
}

static void
CertsFreeWork(CertsWork *w)
{
	explicit_bzero(w->apiv3, sizeof(w->apiv3));
	w->have_apiv3 = false;
	for (int i = 0; i < w->nheld; i++)
	{
		if (w->held[i].pkey)
			EVP_PKEY_free(w->held[i].pkey);
		w->held[i].pkey = NULL;
	}
	for (int i = 0; i < w->nfresh; i++)
	{
		if (w->fresh[i].pkey)
			EVP_PKEY_free(w->fresh[i].pkey);
		w->fresh[i].pkey = NULL;
	}
}

/*
 * Read the APIv3 key and the certificates held now (the latter parsed, so
 * that one of them may vouch for the answer).  Unparsable rows are kept
 * out of trust, not reported: wxpay_check_config() does that.
 */
static bool
CertsReadState(WxpayCertRefresh *r, CertsWork *w)
{
	char	   *qnsp = wxpay_schema_quoted(r->nspoid);
	Datum		arg[1];
	Oid			argtype[1] = {TEXTOID};
	MemoryContext work = CurrentMemoryContext;
	int			rc;
	bool		isnull;
	bool		ok = true;

	arg[0] = CStringGetTextDatum(r->config_name);
	wxpay_spi_connect();

	rc = SPI_execute_with_args(psprintf("SELECT apiv3_key FROM %s.wxpay_config "
										"WHERE name OPERATOR(pg_catalog.=) $1", qnsp),
							   1, argtype, arg, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute_with_args", rc);
	if (SPI_processed == 0)
		ok = false;
	else
	{
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									  1, &isnull);

		if (!isnull)
		{
			char	   *stored = TextDatumGetCString(d);
			char	   *raw = wxpay_config_open_secret(r->config_name, "apiv3_key", stored);
			size_t		len;
			char	   *key = wxpay_trim_space(raw, &len);

			pfree(stored);

			if (len == WXPAY_APIV3_KEY_LEN)
			{
				memcpy(w->apiv3, key, WXPAY_APIV3_KEY_LEN);
				w->have_apiv3 = true;
			}
			explicit_bzero(raw, strlen(raw));
			pfree(raw);
		}
	}
	if (!ok || !w->have_apiv3)
	{
		SPI_finish();
		CertsFail(r, ERRCODE_WXPAY_CONFIG_ERROR,
				  pstrdup("The configuration changed during the refresh: it no longer exists or has no valid apiv3_key."),
				  "Run the refresh again.");
		return false;
	}

	rc = SPI_execute_with_args(psprintf("SELECT serial_no, certificate, effective_time, expire_time "
										"FROM %s.wxpay_platform_certificate "
										"WHERE config_name OPERATOR(pg_catalog.=) $1", qnsp),
							   1, argtype, arg, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute_with_args", rc);

	{
		MemoryContext spi = MemoryContextSwitchTo(work);
		int			n = (int) SPI_processed;

		w->held = palloc0(sizeof(CertsEntry) * Max(n, 1));
		for (int i = 0; i < n; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			CertsEntry *e = &w->held[w->nheld];
			char	   *serial = SPI_getvalue(tup, desc, 1);
			char	   *pem = SPI_getvalue(tup, desc, 2);
			char		actual[WXPAY_SERIAL_MAX + 1];
			WxpayKeyError err;
			Datum		d;

			/* the row's own serial, upper-cased, names it in any case */
			e->serial = pstrdup(serial);
			for (char *p = e->serial; *p; p++)
				*p = pg_toupper((unsigned char) *p);
			d = SPI_getbinval(tup, desc, 3, &e->row_effective_null);
			e->row_effective = e->row_effective_null ? DT_NOBEGIN : DatumGetTimestampTz(d);
			d = SPI_getbinval(tup, desc, 4, &e->row_expire_null);
			e->row_expire = e->row_expire_null ? DT_NOEND : DatumGetTimestampTz(d);
			w->nheld++;

			e->pkey = wxpay_load_certificate(pem, strlen(pem), actual, sizeof(actual),
											 &e->not_before, &e->not_after, &err);
			if (e->pkey != NULL && pg_strcasecmp(actual, serial) != 0)
			{
				EVP_PKEY_free(e->pkey);
				e->pkey = NULL;
			}
			if (e->pkey != NULL)
			{
				e->not_before = Max(e->not_before, e->row_effective);
				e->not_after = Min(e->not_after, e->row_expire);
			}
		}
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
	return true;
}

/* A string member of a JSON object, or false. */
static bool
CertsString(JsonbContainer *obj, const char *key, char **out)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);

	if (v == NULL || v->type != jbvString)
		return false;
	*out = pnstrdup(v->val.string.val, v->val.string.len);
	return true;
}

/*
 * Parse {"data":[...]} and decrypt every certificate.  Any malformed
 * element, undecryptable ciphertext or mismatched serial fails the whole
 * answer: a partial refresh would hide a problem.
 */
static bool
CertsParseAnswer(WxpayCertRefresh *r, CertsWork *w)
{
	WxpayHttpRequest *req = &r->req;
	Jsonb	   *jb;
	JsonbValue *data;
	char	   *why = NULL;
	int			n;

	jb = wxpay_parse_jsonb(req->resp, req->resp_len, &why);
	if (jb == NULL || !JsonContainerIsObject(&jb->root))
	{
		CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
				  psprintf("WeChat Pay's answer could not be read: %s.",
						   why ? why : "it is not a JSON object"),
				  CERTS_HELD);
		return false;
	}
	data = getKeyJsonValueFromContainer(&jb->root, "data", 4, NULL);
	if (data == NULL || data->type != jbvBinary ||
		!JsonContainerIsArray(data->val.binary.data) ||
		JsonContainerSize(data->val.binary.data) == 0)
	{
		CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
				  pstrdup("WeChat Pay's answer could not be read: \"data\" is not a non-empty array."),
				  CERTS_HELD);
		return false;
	}

	n = JsonContainerSize(data->val.binary.data);
	w->fresh = palloc0(sizeof(CertsEntry) * n);
	for (int i = 0; i < n; i++)
	{
		JsonbValue *v = getIthJsonbValueFromContainer(data->val.binary.data, i);
		JsonbValue *enc;
		CertsEntry *e = &w->fresh[w->nfresh];
		char	   *serial,
				   *eff,
				   *exp,
				   *alg,
				   *nonce,
				   *aad,
				   *ct;
		unsigned char *raw;
		size_t		rawlen;
		size_t		pemlen;
		char		actual[WXPAY_SERIAL_MAX + 1];
		WxpayKeyError err;
		char	   *bad = NULL;

		if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
			bad = "it is not a JSON object";
		else if (!CertsString(v->val.binary.data, "serial_no", &serial) ||
				 !wxpay_check_serial(serial))
			bad = "\"serial_no\" is not a hexadecimal string";
		else if (!CertsString(v->val.binary.data, "effective_time", &eff) ||
				 !wxpay_parse_rfc3339(eff, strlen(eff), &e->row_effective))
			bad = "\"effective_time\" is not an RFC 3339 time";
		else if (!CertsString(v->val.binary.data, "expire_time", &exp) ||
				 !wxpay_parse_rfc3339(exp, strlen(exp), &e->row_expire))
			bad = "\"expire_time\" is not an RFC 3339 time";
		else if ((enc = getKeyJsonValueFromContainer(v->val.binary.data,
													 "encrypt_certificate",
													 strlen("encrypt_certificate"),
													 NULL)) == NULL ||
				 enc->type != jbvBinary ||
				 !JsonContainerIsObject(enc->val.binary.data) ||
				 !CertsString(enc->val.binary.data, "algorithm", &alg) ||
				 !CertsString(enc->val.binary.data, "nonce", &nonce) ||
				 !CertsString(enc->val.binary.data, "associated_data", &aad) ||
				 !CertsString(enc->val.binary.data, "ciphertext", &ct))
			bad = "\"encrypt_certificate\" lacks algorithm, nonce, associated_data or ciphertext";
		else if (strcmp(alg, "AEAD_AES_256_GCM") != 0)
			bad = "the algorithm is not AEAD_AES_256_GCM";
		if (bad)
		{
			CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
					  psprintf("Element %d of WeChat Pay's answer could not be read: %s.", i + 1, bad),
					  CERTS_HELD);
			return false;
		}

		raw = palloc(strlen(ct) / 4 * 3 + 3);
		if (!wxpay_base64_decode(ct, strlen(ct), raw, strlen(ct) / 4 * 3 + 3, &rawlen))
		{
			CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
					  psprintf("The ciphertext of platform certificate \"%s\" is not Base64.", serial),
					  CERTS_HELD);
			return false;
		}
		e->pem = wxpay_aes256gcm_decrypt(w->apiv3, sizeof(w->apiv3),
										 nonce, strlen(nonce), aad, strlen(aad),
										 raw, rawlen, &pemlen, &err);
		if (e->pem == NULL)
		{
			CertsFail(r, ERRCODE_WXPAY_CONFIG_ERROR,
					  psprintf("Platform certificate \"%s\" could not be decrypted: %s.", serial, err.msg),
					  "Check that apiv3_key is the APIv3 key set on the merchant platform. " CERTS_HELD);
			return false;
		}
		if (strlen(e->pem) != pemlen)
		{
			CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
					  psprintf("Platform certificate \"%s\" decrypted to text containing a NUL byte.", serial),
					  CERTS_HELD);
			return false;
		}

		e->pkey = wxpay_load_certificate(e->pem, pemlen, actual, sizeof(actual),
										 &e->not_before, &e->not_after, &err);
		if (e->pkey == NULL)
		{
			CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
					  psprintf("Platform certificate \"%s\" decrypted to something unusable: %s.", serial, err.msg),
					  CERTS_HELD);
			return false;
		}
		w->nfresh++;
		if (pg_strcasecmp(actual, serial) != 0)
		{
			CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
					  psprintf("The answer lists serial_no \"%s\" for the certificate with serial number \"%s\".",
							   serial, actual),
					  CERTS_HELD);
			return false;
		}
		e->serial = pstrdup(actual);
		e->not_before = Max(e->not_before, e->row_effective);
		e->not_after = Min(e->not_after, e->row_expire);
	}
	return true;
}

/*
 * The answer must be signed by a certificate it carries or one already
 * held, under the serial it names, valid now.
 */
static bool
CertsCheckSigner(WxpayCertRefresh *r, CertsWork *w)
{
	WxpayHttpRequest *req = &r->req;
	const char *serial = req->h_serial.value;
	TimestampTz now = GetCurrentTimestamp();
	EVP_PKEY   *key = NULL;

	for (int i = 0; i < w->nfresh && key == NULL; i++)
	{
		CertsEntry *e = &w->fresh[i];

		if (pg_strcasecmp(e->serial, serial) == 0 &&
			now >= e->not_before && now < e->not_after)
			key = e->pkey;
	}
	for (int i = 0; i < w->nheld && key == NULL; i++)
	{
		CertsEntry *e = &w->held[i];

		if (e->pkey != NULL && pg_strcasecmp(e->serial, serial) == 0 &&
			now >= e->not_before && now < e->not_after)
			key = e->pkey;
	}
	if (key == NULL)
	{
		CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
				  psprintf("WeChat Pay's answer failed verification: it is signed under serial \"%s\", which is neither a certificate in the answer nor one already held, valid now. It was not trusted.",
						   wxpay_from_utf8(serial, strlen(serial), false, NULL)),
				  CERTS_HELD);
		return false;
	}
	if (!wxpay_answer_check_signature(req, key))
	{
		CertsFail(r, ERRCODE_WXPAY_OUTCOME_UNKNOWN,
				  pstrdup("WeChat Pay's answer failed verification: the signature does not match the answer. It was not trusted."),
				  CERTS_HELD);
		return false;
	}
	return true;
}

/* Upsert the answer's certificates, delete expired ones, fill r->certs. */
static void
CertsStore(WxpayCertRefresh *r, CertsWork *w)
{
	char	   *qnsp = wxpay_schema_quoted(r->nspoid);
	char	   *upsert;
	char	   *delete;
	char	   *respell;
	Oid			uptypes[5] = {TEXTOID, TEXTOID, TEXTOID, TIMESTAMPTZOID, TIMESTAMPTZOID};
	Oid			deltypes[2] = {TEXTOID, TEXTOID};
	TimestampTz now = GetCurrentTimestamp();
	WxpayCertInfo *out;
	int			nout = 0;
	int			rc;

	/*
	 * IS DISTINCT FROM finds "=" by name: the worker's pinned
	 * search_path (pinned.c) and the SQL function's SET search_path make
	 * that pg_catalog's, whatever else exists.
	 */
	upsert = psprintf("INSERT INTO %s.wxpay_platform_certificate AS c "
					  "(config_name, serial_no, certificate, effective_time, expire_time) "
					  "VALUES ($1, $2, $3, $4, $5) "
					  "ON CONFLICT (config_name, serial_no) DO UPDATE SET "
					  "certificate = EXCLUDED.certificate, "
					  "effective_time = EXCLUDED.effective_time, "
					  "expire_time = EXCLUDED.expire_time "
					  "WHERE c.certificate IS DISTINCT FROM EXCLUDED.certificate "
					  "OR c.effective_time IS DISTINCT FROM EXCLUDED.effective_time "
					  "OR c.expire_time IS DISTINCT FROM EXCLUDED.expire_time", qnsp);
	/* rows typed by hand may hold the serial in lower case */
	delete = psprintf("DELETE FROM %s.wxpay_platform_certificate "
					  "WHERE config_name OPERATOR(pg_catalog.=) $1 "
					  "AND pg_catalog.upper(serial_no) OPERATOR(pg_catalog.=) $2", qnsp);
	respell = psprintf("DELETE FROM %s.wxpay_platform_certificate "
					   "WHERE config_name OPERATOR(pg_catalog.=) $1 "
					   "AND pg_catalog.upper(serial_no) OPERATOR(pg_catalog.=) $2 "
					   "AND serial_no OPERATOR(pg_catalog.<>) $2", qnsp);

	out = MemoryContextAllocZero(r->cxt, sizeof(WxpayCertInfo) * (w->nfresh + w->nheld + 1));

	wxpay_spi_connect();

	for (int i = 0; i < w->nfresh; i++)
	{
		CertsEntry *e = &w->fresh[i];
		Datum		args[5];
		bool		was_held = false;

		/* an already expired certificate is of no use */
		if (e->not_after <= now)
			continue;
		/* the same certificate twice in one answer counts once */
		for (int j = 0; j < nout; j++)
			if (strcmp(out[j].serial_no, e->serial) == 0)
				was_held = true;
		if (was_held)
			continue;
		for (int j = 0; j < w->nheld; j++)
			if (strcmp(w->held[j].serial, e->serial) == 0)
				was_held = true;

		args[0] = CStringGetTextDatum(r->config_name);
		args[1] = CStringGetTextDatum(e->serial);
		args[2] = CStringGetTextDatum(e->pem);
		args[3] = TimestampTzGetDatum(e->row_effective);
		args[4] = TimestampTzGetDatum(e->row_expire);
		if (was_held)
		{
			/* one row per certificate: drop a differently spelled serial */
			rc = SPI_execute_with_args(respell, 2, deltypes, args, NULL, false, 0);
			if (rc != SPI_OK_DELETE)
				wxpay_spi_error("SPI_execute_with_args", rc);
		}
		rc = SPI_execute_with_args(upsert, 5, uptypes, args, NULL, false, 0);
		if (rc != SPI_OK_INSERT)
			wxpay_spi_error("SPI_execute_with_args", rc);

		out[nout].serial_no = MemoryContextStrdup(r->cxt, e->serial);
		out[nout].effective_time = e->row_effective;
		out[nout].expire_time = e->row_expire;
		out[nout].is_new = !was_held;
		nout++;
	}

	/* held ones not in the answer stay until they expire */
	for (int i = 0; i < w->nheld; i++)
	{
		CertsEntry *e = &w->held[i];
		bool		in_answer = false;
		TimestampTz expire = e->pkey ? e->not_after : e->row_expire;

		for (int j = 0; j < nout; j++)
			if (strcmp(out[j].serial_no, e->serial) == 0)
				in_answer = true;
		if (in_answer)
			continue;
		if (expire <= now)
		{
			Datum		args[2];

			args[0] = CStringGetTextDatum(r->config_name);
			args[1] = CStringGetTextDatum(e->serial);
			rc = SPI_execute_with_args(delete, 2, deltypes, args, NULL, false, 0);
			if (rc != SPI_OK_DELETE)
				wxpay_spi_error("SPI_execute_with_args", rc);
			continue;
		}
		out[nout].serial_no = MemoryContextStrdup(r->cxt, e->serial);
		out[nout].effective_time = e->pkey ? e->not_before : e->row_effective;
		out[nout].expire_time = expire;
		out[nout].is_new = false;
		nout++;
	}
	SPI_finish();

	r->ncerts = nout;
	r->certs = out;
}

PG_FUNCTION_INFO_V1(wxpay_refresh_platform_certificates);
Datum
wxpay_refresh_platform_certificates(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext cxt;
	WxpayCertRefresh r;
	char	   *name;
	volatile bool ok = false;

	name = wxpay_config_name_arg(fcinfo, 0);

	InitMaterializedSRF(fcinfo, 0);

	cxt = AllocSetContextCreate(CurrentMemoryContext,
								"wxpay_refresh_platform_certificates",
								ALLOCSET_DEFAULT_SIZES);
	/* from here on it is a call: count it however it ends (stats.c) */
	PG_TRY();
	{
		wxpay_cert_refresh_prepare(&r, name, get_func_namespace(fcinfo->flinfo->fn_oid), cxt);
		wxpay_cert_refresh_send(&r);
		ok = wxpay_cert_refresh_finish(&r);
	}
	PG_CATCH();
	{
		wxpay_stat_error(name, WXPAY_STAT_REFRESH, WXPAY_STAT_SESSION);
		PG_RE_THROW();
	}
	PG_END_TRY();
	wxpay_stat_attempt(name, WXPAY_STAT_REFRESH, WXPAY_STAT_SESSION,
					   ok ? WXPAY_STAT_SUCCEEDED : wxpay_stat_outcome(r.result.sqlstate),
					   r.req.failed_over, r.req.elapsed_us);
	if (!ok)
		wxpay_report(&r.result, ERROR);

	for (int i = 0; i < r.ncerts; i++)
	{
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = CStringGetTextDatum(r.certs[i].serial_no);
		values[1] = TimestampTzGetDatum(r.certs[i].effective_time);
		nulls[1] = TIMESTAMP_NOT_FINITE(r.certs[i].effective_time);
		values[2] = TimestampTzGetDatum(r.certs[i].expire_time);
		nulls[2] = TIMESTAMP_NOT_FINITE(r.certs[i].expire_time);
		values[3] = BoolGetDatum(r.certs[i].is_new);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	MemoryContextDelete(cxt);
	return (Datum) 0;
}
