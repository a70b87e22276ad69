/*-------------------------------------------------------------------------
 *
 * checkconfig.c
 *	  wxpay_check_config(): every piece of a merchant configuration checked
 *	  on its own, each with a verdict a merchant can act on, and optionally
 *	  one harmless signed request to WeChat Pay.
 *
 * Why not the loader.  config.c raises at the first problem, which is
 * right for a call and useless for a diagnosis.  This function reads the
 * row itself (SECURITY DEFINER, through the schema of the function, as
 * config.c does) and runs each check separately with the same parsers
 * (sign.c, transport.c), so that check and use agree on what is valid.
 *
 * Secrets.  The private key and the APIv3 key are read, judged and zeroed;
 * a detail says what is wrong with them (their kind, size, length, PEM
 * label) and never quotes them.  OpenSSL's error strings name the failing
 * step only.  Serials, key ids, mchid and base_url are not secret and are
 * quoted to make mistakes visible.
 *
 * Live mode.  With live => true and every check that the request depends
 * on passed, it queries a sign plan number made of "wxpay-check-" and
 * random characters, which no merchant has created: WeChat Pay checks the
 * signature first, so a 404 for the plan means the signature (mchid,
 * serial_no, private_key, clock) was accepted.  Nothing is changed on the
 * platform.  The answer, when signed, is then verified with the
 * configuration's keys.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "wxpay_signplan.h"

#define CHECK_PROBE_PREFIX	"wxpay-check-"

/* The row as read, copied out of SPI. */
typedef struct CheckRow
{
	char	   *mchid;
	char	   *serial_no;
	char	   *private_key;	/* secret: zeroed when done */
	char	   *pubkey_id;
	char	   *pubkey;
	char	   *base_url;
	char	   *backup_base_url;	/* NULL: no failover */
	char	   *ca_cert;
	char	   *apiv3_key;		/* secret: zeroed when done */
	char	   *private_key_why;	/* sealed and cannot be opened: why */
	char	   *apiv3_key_why;
	int			keys_at_rest;	/* -1 (no root key), 0, 1 */
	char	   *keys_at_rest_text;
	int			ncerts;
	char	  **cert_serial;
	char	  **cert_pem;
	TimestampTz *cert_effective;	/* DT_NOBEGIN when NULL */
	TimestampTz *cert_expire;	/* DT_NOEND when NULL */
} CheckRow;

/* One verdict; ok NULL means "not checked". */
typedef struct CheckOut
{
	ReturnSetInfo *rsinfo;
} CheckOut;

static void CheckEmit(CheckOut *out, const char *name, int ok,
					  const char *fmt,...) pg_attribute_printf(4, 5);
static void CheckRead(const char *name, Oid nspoid, CheckRow *row);
static const char *CheckPemLabel(const char *pem);
static bool CheckMchid(CheckOut *out, CheckRow *row);
static bool CheckPrivateKey(CheckOut *out, CheckRow *row);
static bool CheckSerial(CheckOut *out, CheckRow *row);
static bool CheckPublicKey(CheckOut *out, CheckRow *row, bool *usable);
static bool CheckCertificates(CheckOut *out, CheckRow *row, int *usable);
static bool CheckBaseUrl(CheckOut *out, CheckRow *row);
static bool CheckBackupUrl(CheckOut *out, CheckRow *row);
static bool CheckCaCert(CheckOut *out, CheckRow *row);
static void CheckApiv3Key(CheckOut *out, CheckRow *row);
static bool CheckStatic(CheckOut *out, CheckRow *row, const char *name);
static void CheckOpenSecrets(CheckRow *row, const char *name);
static void CheckLive(CheckOut *out, const char *name, Oid nspoid);
static void CheckLiveGuarded(CheckOut *out, const char *name, Oid nspoid);
static const char *CheckSignErrorAdvice(const char *message);

#define CHECK_FAIL	0
#define CHECK_OK	1
#define CHECK_SKIP	2

static void
CheckEmit(CheckOut *out, const char *name, int ok, const char *fmt,...)
{
	StringInfoData buf;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};

	initStringInfo(&buf);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	values[0] = CStringGetTextDatum(name);
	values[1] = BoolGetDatum(ok == CHECK_OK);
	nulls[1] = ok == CHECK_SKIP;
	values[2] = CStringGetTextDatum(buf.data);
	tuplestore_putvalues(out->rsinfo->setResult, out->rsinfo->setDesc,
						 values, nulls);
	pfree(buf.data);
}

/*
 * Read the config row and its certificate rows as the function owner into
 * the caller's context.  42704 when there is no such config.
 */
static void
CheckRead(const char *name, Oid nspoid, CheckRow *row)
{
	MemoryContext outer = CurrentMemoryContext;
	const char *qnsp = wxpay_schema_quoted(nspoid);
	Datum		arg[1];
	Oid			argtype[1] = {TEXTOID};
	int			rc;

	arg[0] = CStringGetTextDatum(name);
	memset(row, 0, sizeof(CheckRow));

	wxpay_spi_connect();
	rc = SPI_execute_with_args(psprintf("SELECT mchid, serial_no, private_key, "
										"wechatpay_public_key_id, wechatpay_public_key, "
										"base_url, ca_cert, apiv3_key, backup_base_url "
										"FROM %s.wxpay_config WHERE name OPERATOR(pg_catalog.=) $1",
										qnsp),
							   1, argtype, arg, NULL, false, 1);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute_with_args", rc);
	if (SPI_processed == 0)
		wxpay_config_missing(name);
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MemoryContext spi = MemoryContextSwitchTo(outer);

		row->mchid = wxpay_spi_text(tup, desc, 1);
		row->serial_no = wxpay_spi_text(tup, desc, 2);
		row->private_key = wxpay_spi_text(tup, desc, 3);
		row->pubkey_id = wxpay_spi_text(tup, desc, 4);
		row->pubkey = wxpay_spi_text(tup, desc, 5);
		row->base_url = wxpay_spi_text(tup, desc, 6);
		row->ca_cert = wxpay_spi_text(tup, desc, 7);
		row->apiv3_key = wxpay_spi_text(tup, desc, 8);
		row->backup_base_url = wxpay_spi_text(tup, desc, 9);
		MemoryContextSwitchTo(spi);
	}

	rc = SPI_execute_with_args(psprintf("SELECT serial_no, certificate, effective_time, expire_time "
										"FROM %s.wxpay_platform_certificate "
										"WHERE config_name OPERATOR(pg_catalog.=) $1 ORDER BY serial_no",
										qnsp),
							   1, argtype, arg, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute_with_args", rc);
	{
		MemoryContext spi = MemoryContextSwitchTo(outer);
		int			n = (int) SPI_processed;

		row->ncerts = n;
		row->cert_serial = palloc0(sizeof(char *) * (n + 1));
		row->cert_pem = palloc0(sizeof(char *) * (n + 1));
		row->cert_effective = palloc0(sizeof(TimestampTz) * (n + 1));
		row->cert_expire = palloc0(sizeof(TimestampTz) * (n + 1));
		for (int i = 0; i < n; i++)
		{
			HeapTuple	tup = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			Datum		d;

			row->cert_serial[i] = wxpay_spi_text(tup, desc, 1);
			row->cert_pem[i] = wxpay_spi_text(tup, desc, 2);
			d = SPI_getbinval(tup, desc, 3, &isnull);
			row->cert_effective[i] = isnull ? DT_NOBEGIN : DatumGetTimestampTz(d);
			d = SPI_getbinval(tup, desc, 4, &isnull);
			row->cert_expire[i] = isnull ? DT_NOEND : DatumGetTimestampTz(d);
		}
		MemoryContextSwitchTo(spi);
	}
	SPI_finish();
}

/* The label of the first PEM block ("PRIVATE KEY", ...), or NULL. */
static const char *
CheckPemLabel(const char *pem)
{
	static char label[64];
	const char *p = strstr(pem, "-----BEGIN ");
	const char *end;

	if (p == NULL)
		return NULL;
	p += strlen("-----BEGIN ");
	end = strstr(p, "-----");
	if (end == NULL || end - p >= (int) sizeof(label) || memchr(p, '\n', end - p))
		return NULL;
	memcpy(label, p, end - p);
	label[end - p] = '\0';
	return label;
}

static bool
CheckMchid(CheckOut *out, CheckRow *row)
{
	if (!wxpay_check_mchid(row->mchid))
	{
		CheckEmit(out, "mchid", CHECK_FAIL,
				  "mchid \"%s\" is not a merchant number: use the 1 to 32 digits shown on the merchant platform.",
				  row->mchid);
		return false;
	}
	CheckEmit(out, "mchid", CHECK_OK, "Merchant number %s.", row->mchid);
	return true;
}

static bool
CheckPrivateKey(CheckOut *out, CheckRow *row)
{
	const char *label;
	WxpayKeyError err;
	EVP_PKEY   *pkey;
	int			bits;

	if (row->private_key_why != NULL)
	{
		CheckEmit(out, "private_key", CHECK_FAIL,
				  "private_key is sealed and cannot be opened: %s", row->private_key_why);
		return false;
	}
	label = CheckPemLabel(row->private_key);
	if (label == NULL)
	{
		CheckEmit(out, "private_key", CHECK_FAIL,
				  "private_key is not PEM text (no \"-----BEGIN ...-----\" line): store the whole content of apiclient_key.pem.");
		return false;
	}
	if (strcmp(label, "CERTIFICATE") == 0)
	{
		CheckEmit(out, "private_key", CHECK_FAIL,
				  "private_key holds a certificate (BEGIN CERTIFICATE): store apiclient_key.pem, not apiclient_cert.pem.");
		return false;
	}
	if (strcmp(label, "PUBLIC KEY") == 0 || strcmp(label, "RSA PUBLIC KEY") == 0)
	{
		CheckEmit(out, "private_key", CHECK_FAIL,
				  "private_key holds a public key (BEGIN %s): store the merchant API private key, apiclient_key.pem.",
				  label);
		return false;
	}
	if (strcmp(label, "ENCRYPTED PRIVATE KEY") == 0 ||
		strstr(row->private_key, "ENCRYPTED") != NULL)
	{
		CheckEmit(out, "private_key", CHECK_FAIL,
				  "private_key is an encrypted PEM (BEGIN %s): store it unencrypted, for example the output of \"openssl pkey -in encrypted.pem -out apiclient_key.pem\".",
				  label);
		return false;
	}

	pkey = wxpay_load_private_key(row->private_key, strlen(row->private_key), &err);
	if (pkey == NULL)
	{
		if (err.lib[0])
			CheckEmit(out, "private_key", CHECK_FAIL,
					  "private_key (BEGIN %s) cannot be used: %s (OpenSSL: %s). Store apiclient_key.pem exactly as downloaded.",
					  label, err.msg, err.lib);
		else
			CheckEmit(out, "private_key", CHECK_FAIL,
					  "private_key (BEGIN %s) cannot be used: %s.", label, err.msg);
		return false;
	}
	bits = EVP_PKEY_get_bits(pkey);
	EVP_PKEY_free(pkey);
	CheckEmit(out, "private_key", CHECK_OK, "RSA private key of %d bits (%s).",
			  bits, strcmp(label, "RSA PRIVATE KEY") == 0 ? "PKCS#1" : "PKCS#8");
	return true;
}

static bool
CheckSerial(CheckOut *out, CheckRow *row)
{
	const char *s = row->serial_no;
	size_t		len = strlen(s);

	if (wxpay_check_serial(s))
	{
		CheckEmit(out, "serial_no", CHECK_OK, "%zu hexadecimal digits.", len);
		return true;
	}
	if (pg_strncasecmp(s, "serial=", 7) == 0)
		CheckEmit(out, "serial_no", CHECK_FAIL,
				  "serial_no \"%s\" starts with \"serial=\": store only the hexadecimal digits that follow.", s);
	else if (strchr(s, ':') != NULL)
		CheckEmit(out, "serial_no", CHECK_FAIL,
				  "serial_no \"%s\" contains colons: store the hexadecimal digits alone, as \"openssl x509 -noout -serial -in apiclient_cert.pem\" prints them.", s);
	else if (strpbrk(s, " \t\r\n") != NULL)
		CheckEmit(out, "serial_no", CHECK_FAIL,
				  "serial_no \"%s\" contains white space: remove it.", s);
	else
		CheckEmit(out, "serial_no", CHECK_FAIL,
				  "serial_no \"%s\" is not hexadecimal: copy the merchant API certificate serial number from the merchant platform, or from \"openssl x509 -noout -serial -in apiclient_cert.pem\".", s);
	return false;
}

static bool
CheckPublicKey(CheckOut *out, CheckRow *row, bool *usable)
{
	const char *id = row->pubkey_id;
	WxpayKeyError err;
	EVP_PKEY   *pkey;
	const char *label;

	*usable = false;
	if (id == NULL && row->pubkey == NULL)
	{
		CheckEmit(out, "wechatpay_public_key", CHECK_OK,
				  "Not set: answers are verified with platform certificates.");
		return true;
	}
	if (id == NULL || row->pubkey == NULL)
	{
		CheckEmit(out, "wechatpay_public_key", CHECK_FAIL,
				  "Only %s is set: set both wechatpay_public_key_id and wechatpay_public_key (pub_key.pem), or neither.",
				  id ? "wechatpay_public_key_id" : "wechatpay_public_key");
		return false;
	}
	if (!wxpay_check_pubkey_id(id))
	{
		CheckEmit(out, "wechatpay_public_key", CHECK_FAIL,
				  "wechatpay_public_key_id \"%s\" is not a WeChat Pay public key ID (\"PUB_KEY_ID_\" followed by digits).",
				  id);
		return false;
	}
	label = CheckPemLabel(row->pubkey);
	if (label != NULL && strcmp(label, "CERTIFICATE") == 0)
	{
		CheckEmit(out, "wechatpay_public_key", CHECK_FAIL,
				  "wechatpay_public_key holds a certificate: store pub_key.pem (BEGIN PUBLIC KEY), or put platform certificates in wxpay_platform_certificate.");
		return false;
	}
	pkey = wxpay_load_public_key(row->pubkey, strlen(row->pubkey), &err);
	if (pkey == NULL)
	{
		CheckEmit(out, "wechatpay_public_key", CHECK_FAIL,
				  "wechatpay_public_key cannot be used: %s%s%s%s. Store pub_key.pem exactly as downloaded.",
				  err.msg, err.lib[0] ? " (OpenSSL: " : "", err.lib, err.lib[0] ? ")" : "");
		return false;
	}
	CheckEmit(out, "wechatpay_public_key", CHECK_OK, "%s: RSA public key of %d bits.",
			  id, EVP_PKEY_get_bits(pkey));
	EVP_PKEY_free(pkey);
	*usable = true;
	return true;
}

static bool
CheckCertificates(CheckOut *out, CheckRow *row, int *usable)
{
	TimestampTz now = GetCurrentTimestamp();
	StringInfoData good;
	StringInfoData bad;
	int			nexpired = 0;
	int			nfuture = 0;

	*usable = 0;
	if (row->ncerts == 0)
	{
		CheckEmit(out, "platform_certificates", CHECK_OK, "None stored.");
		return true;
	}
	initStringInfo(&good);
	initStringInfo(&bad);
	for (int i = 0; i < row->ncerts; i++)
	{
		char		actual[WXPAY_SERIAL_MAX + 1];
		TimestampTz nb,
					na;
		WxpayKeyError err;
		EVP_PKEY   *pkey;

		pkey = wxpay_load_certificate(row->cert_pem[i], strlen(row->cert_pem[i]),
									  actual, sizeof(actual), &nb, &na, &err);
		if (pkey == NULL)
		{
			appendStringInfo(&bad, " The row with serial_no \"%s\" cannot be used: %s%s%s%s.",
							 row->cert_serial[i], err.msg,
							 err.lib[0] ? " (OpenSSL: " : "", err.lib, err.lib[0] ? ")" : "");
			continue;
		}
		EVP_PKEY_free(pkey);
		if (pg_strcasecmp(actual, row->cert_serial[i]) != 0)
		{
			appendStringInfo(&bad, " The row with serial_no \"%s\" holds the certificate with serial number \"%s\": fix serial_no.",
							 row->cert_serial[i], actual);
			continue;
		}
		nb = Max(nb, row->cert_effective[i]);
		na = Min(na, row->cert_expire[i]);
		if (na <= now)
			nexpired++;
		else if (nb > now)
			nfuture++;
		else
		{
			(*usable)++;
			appendStringInfo(&good, "%s%s (until %s)", *usable > 1 ? ", " : "",
							 actual, timestamptz_to_str(na));
		}
	}
	if (bad.len > 0)
	{
		CheckEmit(out, "platform_certificates", CHECK_FAIL,
				  "%d stored, and every call fails until this is fixed.%s",
				  row->ncerts, bad.data);
		return false;
	}
	CheckEmit(out, "platform_certificates", CHECK_OK,
			  "%d stored: %d usable now%s%s%s, %d expired (ignored), %d not yet valid.",
			  row->ncerts, *usable, *usable ? " (" : "", good.data, *usable ? ")" : "",
			  nexpired, nfuture);
	return true;
}

static bool
CheckBaseUrl(CheckOut *out, CheckRow *row)
{
	char		why[256];
	char	   *url = wxpay_validate_base_url(row->base_url, why, sizeof(why));

	if (url == NULL)
	{
		CheckEmit(out, "base_url", CHECK_FAIL, "base_url \"%s\" cannot be used. %s",
				  row->base_url, why);
		return false;
	}
	CheckEmit(out, "base_url", CHECK_OK, "Requests go to %s.", url);
	return true;
}

/* The backup domain, judged by the same parser that config.c uses. */
static bool
CheckBackupUrl(CheckOut *out, CheckRow *row)
{
	char		why[256];
	char	   *url;

	if (row->backup_base_url == NULL)
	{
		CheckEmit(out, "backup_base_url", CHECK_OK,
				  "Not set: no failover; when base_url cannot be reached, nothing is sent.");
		return true;
	}
	url = wxpay_validate_base_url(row->backup_base_url, why, sizeof(why));
	if (url == NULL)
	{
		CheckEmit(out, "backup_base_url", CHECK_FAIL,
				  "backup_base_url \"%s\" cannot be used, so every call fails. %s Set it to an https:// URL with a host and an optional port (WeChat Pay's backup domain is https://api2.mch.weixin.qq.com), or to NULL to disable failover.",
				  row->backup_base_url, why);
		return false;
	}
	CheckEmit(out, "backup_base_url", CHECK_OK,
			  "When %s cannot be reached, requests go to %s.",
			  row->base_url, url);
	return true;
}

static bool
CheckCaCert(CheckOut *out, CheckRow *row)
{
	WxpayKeyError err;
	int			n;

	if (row->ca_cert == NULL)
	{
		CheckEmit(out, "ca_cert", CHECK_OK,
				  "Not set: the database server's trusted CAs verify WeChat Pay's TLS certificate.");
		return true;
	}
	n = wxpay_count_certificates(row->ca_cert, strlen(row->ca_cert), &err);
	if (n < 0)
	{
		CheckEmit(out, "ca_cert", CHECK_FAIL,
				  "ca_cert is not a PEM certificate bundle: %s%s%s%s. Store the CA certificates in PEM, or set ca_cert to NULL to use the system's CAs.",
				  err.msg, err.lib[0] ? " (OpenSSL: " : "", err.lib, err.lib[0] ? ")" : "");
		return false;
	}
	CheckEmit(out, "ca_cert", CHECK_OK, "%d CA certificate%s.", n, n == 1 ? "" : "s");
	return true;
}

static void
CheckApiv3Key(CheckOut *out, CheckRow *row)
{
	size_t		len;
	size_t		trimmed;
	const char *p;

	if (row->apiv3_key_why != NULL)
	{
		CheckEmit(out, "apiv3_key", CHECK_FAIL,
				  "apiv3_key is sealed and cannot be opened: %s", row->apiv3_key_why);
		return;
	}
	if (row->apiv3_key == NULL)
	{
		CheckEmit(out, "apiv3_key", CHECK_OK,
				  row->pubkey_id == NULL ?
				  "Not set: platform certificates cannot be downloaded, so keep wxpay_platform_certificate current by hand." :
				  "Not set: not needed in public-key mode.");
		return;
	}
	len = strlen(row->apiv3_key);
	p = row->apiv3_key;
	trimmed = len;
	while (trimmed > 0 && strchr(" \t\r\n", p[trimmed - 1]) != NULL)
		trimmed--;
	while (trimmed > 0 && strchr(" \t\r\n", *p) != NULL)
	{
		p++;
		trimmed--;
	}
	if (trimmed != WXPAY_APIV3_KEY_LEN)
	{
		CheckEmit(out, "apiv3_key", CHECK_FAIL,
				  "apiv3_key is %zu bytes long%s; the APIv3 key set on the merchant platform is exactly %d.",
				  trimmed, trimmed != len ? " without its surrounding white space" : "",
				  WXPAY_APIV3_KEY_LEN);
		return;
	}
	CheckEmit(out, "apiv3_key", CHECK_OK, "%d bytes%s.", WXPAY_APIV3_KEY_LEN,
			  trimmed != len ? " (surrounding white space is ignored)" : "");
}

/* Which setting a SIGN_ERROR most likely points at, from its message. */
static const char *
CheckSignErrorAdvice(const char *message)
{
	if (message != NULL)
	{
		if (strcasestr(message, "serial") != NULL)
			return "Check serial_no: it must be the serial number of the merchant API certificate (apiclient_cert.pem) that belongs to private_key.";
		if (strcasestr(message, "mchid") != NULL || strcasestr(message, "merchant") != NULL)
			return "Check mchid: it must be the merchant number that owns the API certificate.";
		if (strcasestr(message, "timestamp") != NULL)
			return "Check the database server's clock: WeChat Pay refuses requests more than 5 minutes off.";
		if (strcasestr(message, "signature") != NULL)
			return "Check private_key: it must be apiclient_key.pem of the certificate whose serial number is serial_no.";
	}
	return "Check mchid, serial_no (the merchant API certificate's serial), private_key (that certificate's apiclient_key.pem) and the database server's clock.";
}

/*
 * One signed query for a plan that does not exist, judged by the one
 * classifier (call.c), so that its words are those of every other call;
 * then read here: a 404 is what a correct configuration gets.
 */
static void
CheckLive(CheckOut *out, const char *name, Oid nspoid)
{
	const WxpayConfig *cfg = wxpay_config_get_signing(name, nspoid);
	WxpayHttpRequest req;
	WxpayHttpRequest *reqp = &req;
	WxpayAttempt a;
	WxpayCallResult res;
	char		probe[WXPAY_PLAN_NO_MAX + 1];
	char		nonce[WXPAY_NONCE_LEN + 1];
	char	   *path;
	char	   *why = NULL;
	char	   *serial;
	const char *rid;
	const char *code;

	wxpay_make_nonce(nonce);
	snprintf(probe, sizeof(probe), "%s%.*s", CHECK_PROBE_PREFIX,
			 (int) (WXPAY_PLAN_NO_MAX - strlen(CHECK_PROBE_PREFIX)), nonce);
	path = psprintf("%s%s", WXPAY_PLAN_PATH, probe);
	wxpay_request_sign(cfg, "GET", path, NULL, 0, &req);
	wxpay_http_perform(&reqp, 1, 1);

	memset(&a, 0, sizeof(a));
	a.op = WXPAY_OP_CHECK;
	a.subject = name;
	a.base_url = cfg->base_url;
	a.backup_base_url = cfg->backup_base_url;
	a.req = &req;
	a.verify_cfg = NULL;		/* verified below, as its own row */
	(void) wxpay_classify_attempt(&a, &res);
	code = res.error_code;
	rid = res.request_id ? psprintf(" Request-ID: %s.", res.request_id) : "";

	/* the request did its job when WeChat Pay judged its signature */
	wxpay_stat_attempt(name, WXPAY_STAT_CHECK, WXPAY_STAT_SESSION,
					   req.outcome == WXPAY_TRANSPORT_NOT_SENT ? WXPAY_STAT_NOT_SENT :
					   req.outcome == WXPAY_TRANSPORT_FAILED ? WXPAY_STAT_UNKNOWN :
					   req.status == 404 || (req.status >= 200 && req.status < 300) ?
					   WXPAY_STAT_SUCCEEDED :
					   req.status >= 400 && req.status < 500 ? WXPAY_STAT_REJECTED :
					   WXPAY_STAT_UNKNOWN,
					   req.failed_over, req.elapsed_us);

	if (req.outcome != WXPAY_TRANSPORT_ANSWERED)
	{
		CheckEmit(out, "live_request", CHECK_FAIL,
				  "%s Check base_url, backup_base_url, ca_cert (TLS) and the network path from the database server.",
				  res.detail);
		CheckEmit(out, "live_answer", CHECK_SKIP, "Not checked: no answer came.");
		return;
	}

	if (req.status == 404 || (req.status >= 200 && req.status < 300))
		CheckEmit(out, "live_request", CHECK_OK,
				  "WeChat Pay at %s accepted the request's signature (HTTP %ld%s%s for the test plan \"%s\"%s).%s",
				  res.sent_to, req.status, code ? " " : "", code ? code : "", probe,
				  req.status == 404 ? ", as expected" : ", which exists",
				  rid);
	else if (req.status == 401 && code && strcmp(code, "SIGN_ERROR") == 0)
		CheckEmit(out, "live_request", CHECK_FAIL,
				  "WeChat Pay refused the request's signature (SIGN_ERROR%s%s). %s%s",
				  res.error_message ? ": " : "", res.error_message ? res.error_message : "",
				  CheckSignErrorAdvice(res.error_message), rid);
	else
		CheckEmit(out, "live_request", CHECK_FAIL,
				  "%s The live check expects HTTP 404 for its test plan.%s",
				  res.detail, req.status >= 500 ? " Try again later." : "");

	if (req.h_timestamp.count == 0 && req.h_nonce.count == 0 &&
		req.h_signature.count == 0 && req.h_serial.count == 0)
	{
		CheckEmit(out, "live_answer", CHECK_SKIP,
				  "Not checked: WeChat Pay did not sign this answer (HTTP %ld).", req.status);
		return;
	}
	serial = wxpay_from_utf8(req.h_serial.value, req.h_serial.len, false, NULL);
	if (wxpay_answer_verify(cfg, &req, &why))
	{
		CheckEmit(out, "live_answer", CHECK_OK,
				  "The answer's signature verified with key \"%s\".", serial);
		return;
	}
	if (req.h_serial.count == 1 && !req.h_serial.overlong &&
		wxpay_config_find_key(cfg, req.h_serial.value, GetCurrentTimestamp()) == NULL)
	{
		if (strncmp(req.h_serial.value, "PUB_KEY_ID_", 11) == 0)
			CheckEmit(out, "live_answer", CHECK_FAIL,
					  "WeChat Pay's answer cannot be verified: it is signed with public key \"%s\", which is not this configuration's wechatpay_public_key_id. Copy the public key ID and pub_key.pem from the merchant platform.",
					  serial);
		else
			CheckEmit(out, "live_answer", CHECK_FAIL,
					  "WeChat Pay's answer cannot be verified: it is signed with platform certificate \"%s\", which is not stored or not valid now. Run wxpay_refresh_platform_certificates('%s') (needs apiv3_key), or store that certificate.",
					  serial, name);
		return;
	}
	CheckEmit(out, "live_answer", CHECK_FAIL,
			  "WeChat Pay's answer cannot be verified: %s. If the serial is right, the stored key under it is not the one WeChat Pay signs with.",
			  why);
}

/*
 * CheckLive, with a configuration error (class WX, or a config that
 * disappeared meanwhile) turned into a failed row: live => true returns
 * its rows.  The request runs in a subtransaction; every other error
 * (cancel, out of memory) propagates.
 */
static void
CheckLiveGuarded(CheckOut *out, const char *name, Oid nspoid)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		CheckLive(out, name, nspoid);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) !=
			ERRCODE_TO_CATEGORY(ERRCODE_WXPAY_CONFIG_ERROR) &&
			edata->sqlerrcode != ERRCODE_UNDEFINED_OBJECT)
			PG_RE_THROW();
		if (edata->sqlerrcode != ERRCODE_UNDEFINED_OBJECT)	/* stats */
			wxpay_stat_attempt(name, WXPAY_STAT_CHECK, WXPAY_STAT_SESSION,
							   WXPAY_STAT_ERROR, false, -1);
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		CheckEmit(out, "live_request", CHECK_FAIL, "Not sent: %s.%s%s",
				  edata->message, edata->detail ? " " : "",
				  edata->detail ? edata->detail : "");
		CheckEmit(out, "live_answer", CHECK_SKIP, "Not checked: nothing was sent.");
		FreeErrorData(edata);
	}
	PG_END_TRY();
}

/*
 * The checks that need no network, one row each; true when everything a
 * request depends on passed (the verification key and apiv3_key do not
 * stop a live request: its answer shows what they are worth).
 */
static bool
CheckStatic(CheckOut *out, CheckRow *row, const char *name)
{
	bool		request_ok = true;
	bool		pub_usable = false;
	int			certs_usable = 0;

	request_ok &= CheckMchid(out, row);
	request_ok &= CheckPrivateKey(out, row);
	request_ok &= CheckSerial(out, row);
	request_ok &= CheckPublicKey(out, row, &pub_usable);
	request_ok &= CheckCertificates(out, row, &certs_usable);
	if (pub_usable || certs_usable > 0)
		CheckEmit(out, "verification_key", CHECK_OK,
				  "Answers can be verified with %s%s%s.",
				  pub_usable ? "the WeChat Pay public key" : "",
				  pub_usable && certs_usable ? " and " : "",
				  certs_usable ? "the platform certificates usable now" : "");
	else
		CheckEmit(out, "verification_key", CHECK_FAIL,
				  "No key can verify WeChat Pay's answers, so every call fails. %s",
				  (row->apiv3_key != NULL || row->apiv3_key_why != NULL) ?
				  psprintf("Run SELECT * FROM wxpay_refresh_platform_certificates('%s'), or set wechatpay_public_key_id and wechatpay_public_key (pub_key.pem).", name) :
				  "Set wechatpay_public_key_id and wechatpay_public_key (pub_key.pem), or store the current platform certificates (set apiv3_key to download them).");
	request_ok &= CheckBaseUrl(out, row);
	request_ok &= CheckBackupUrl(out, row);
	request_ok &= CheckCaCert(out, row);
	CheckApiv3Key(out, row);
	CheckEmit(out, "keys_at_rest",
			  row->keys_at_rest < 0 ? CHECK_SKIP :
			  row->keys_at_rest > 0 ? CHECK_OK : CHECK_FAIL,
			  "%s", row->keys_at_rest_text);
	return request_ok;
}

/*
 * Keys at rest (config/rootkey.c): judge the values as stored, then open
 * them in place; a value that cannot be opened becomes its column's failed
 * row, with the reason.
 */
static void
CheckOpenSecrets(CheckRow *row, const char *name)
{
	char	   *plain;

	row->keys_at_rest = wxpay_config_keys_at_rest(row->private_key,
												  row->apiv3_key,
												  &row->keys_at_rest_text);
	plain = wxpay_config_try_open_secret(name, "private_key", row->private_key,
										 &row->private_key_why);
	wxpay_secret_free(row->private_key);
	row->private_key = plain;
	if (row->apiv3_key != NULL)
	{
		plain = wxpay_config_try_open_secret(name, "apiv3_key", row->apiv3_key,
											 &row->apiv3_key_why);
		wxpay_secret_free(row->apiv3_key);
		row->apiv3_key = plain;
	}
}

PG_FUNCTION_INFO_V1(wxpay_check_config);
Datum
wxpay_check_config(PG_FUNCTION_ARGS)
{
	CheckOut	out;
	CheckRow	row;
	char	   *name;
	Oid			nspoid;
	bool		live;
	volatile bool request_ok = false;

	name = wxpay_config_name_arg(fcinfo, 0);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("live must not be null")));
	live = PG_GETARG_BOOL(1);
	nspoid = get_func_namespace(fcinfo->flinfo->fn_oid);

	InitMaterializedSRF(fcinfo, 0);
	out.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	CheckRead(name, nspoid, &row);
	PG_TRY();
	{
		CheckOpenSecrets(&row, name);
		request_ok = CheckStatic(&out, &row, name);
	}
	PG_FINALLY();
	{
		wxpay_secret_free(row.private_key);
		row.private_key = NULL;
		wxpay_secret_free(row.apiv3_key);
		row.apiv3_key = NULL;
	}
	PG_END_TRY();

	if (live && !request_ok)
	{
		CheckEmit(&out, "live_request", CHECK_SKIP,
				  "Not sent: fix the failed checks above first.");
		CheckEmit(&out, "live_answer", CHECK_SKIP, "Not checked: nothing was sent.");
	}
	else if (live)
	{
		/* a live request is a call: count it however it ends (stats.c) */
		PG_TRY();
		{
			CheckLiveGuarded(&out, name, nspoid);
		}
		PG_CATCH();
		{
			wxpay_stat_error(name, WXPAY_STAT_CHECK, WXPAY_STAT_SESSION);
			PG_RE_THROW();
		}
		PG_END_TRY();
	}

	return (Datum) 0;
}
