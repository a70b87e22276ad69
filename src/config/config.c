/*-------------------------------------------------------------------------
 *
 * config.c
 *	  Merchant configuration: reading the protected tables, parsing keys
 *	  once, and keeping them in a per-backend cache that every change to the
 *	  tables invalidates.
 *
 * Reading.  The SQL entry points are SECURITY DEFINER, so the SPI queries
 * here run as the extension owner and may read the keys that the caller
 * cannot.  The queries name the tables through the schema of the function
 * being called (the extension's schema), never through search_path.  They
 * run under the latest snapshot, as catalog lookups do: a cache filled
 * inside an old REPEATABLE READ snapshot would otherwise outlive the change
 * that invalidated it.
 *
 * Caching.  Parsed configs live in CacheCxt (a child of TopMemoryContext);
 * their EVP_PKEYs are malloc'd by OpenSSL and freed explicitly.  A statement
 * trigger on both tables calls CacheInvalidateRelcacheByRelid(), so every
 * backend gets a relcache invalidation for the table when the change
 * commits (and this backend at its next command).  The callback only marks
 * the cache stale; the stale entries are freed at the start of the next
 * lookup, never while a caller may hold a pointer into them.
 *
 * Secrets.  Nothing from the private key reaches an error message: parse
 * failures report OpenSSL's step, not the data.  Our own copies of the PEM
 * text are zeroed before they are freed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"


typedef struct CacheEntry
{
	struct CacheEntry *next;
	MemoryContext cxt;			/* holds this entry and its strings */
	WxpayConfig cfg;
} CacheEntry;

/* local state */
static MemoryContext CacheCxt = NULL;
static CacheEntry *CacheHead = NULL;
static bool CacheStale = false;
static uint64 CacheRootKeyGen = 0;	/* rootkey.c's generation it holds */
static Oid	ConfigRelid = InvalidOid;
static Oid	CertRelid = InvalidOid;

static void ConfigInvalidate(Datum arg, Oid relid);
static void ConfigFreeAll(void);
static void ConfigFreeKeys(WxpayConfig *cfg);
static void ConfigSelectLatest(const char *sql, const char *name, long limit);
static CacheEntry *ConfigLoad(const char *name, Oid nspoid);
static void ConfigBadSerial(const char *name, const char *s);
static void ConfigParse(const char *name, HeapTuple tup, TupleDesc desc,
						WxpayConfig *cfg);
static void ConfigParseCertificates(const char *name, WxpayConfig *cfg,
									int ncerts, HeapTuple *tups, TupleDesc desc);
WXPAY_NORETURN static void ConfigKeyFailed(const char *name,
										   const char *what,
										   WxpayKeyError *err);

PG_FUNCTION_INFO_V1(wxpay_config_changed);

void
ConfigInit(void)
{
	CacheRegisterRelcacheCallback(ConfigInvalidate, (Datum) 0);
}

/* relcache callback: InvalidOid means "everything" (sinval overflow) */
static void
ConfigInvalidate(Datum arg, Oid relid)
{
	(void) arg;
	if (relid == InvalidOid || relid == ConfigRelid || relid == CertRelid)
		CacheStale = true;
}

/*
 * Statement trigger on wxpay_config and wxpay_platform_certificate: make
 * every backend drop its cache when this transaction commits.
 */
Datum
wxpay_config_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("wxpay_config_changed() must be called as a trigger")));

	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));

	/*
	 * Tell the worker at commit (it only notices, never is called): a
	 * changed config may have certificates to fetch, and new keys or
	 * certificates are to be used for its next requests.
	 */
	if (strcmp(RelationGetRelationName(trigdata->tg_relation), "wxpay_config") == 0)
		wxpay_worker_wake_at_commit(WXPAY_WAKE_CONFIG);
	else
		wxpay_worker_wake_at_commit(WXPAY_WAKE_KEYS);
	return PointerGetDatum(NULL);
}

static void
ConfigFreeKeys(WxpayConfig *cfg)
{
	if (cfg->private_key)
		EVP_PKEY_free(cfg->private_key);
	cfg->private_key = NULL;
	for (int i = 0; i < cfg->nkeys; i++)
	{
		if (cfg->keys[i].pkey)
			EVP_PKEY_free(cfg->keys[i].pkey);
		cfg->keys[i].pkey = NULL;
	}
	cfg->nkeys = 0;
}

static void
ConfigFreeAll(void)
{
	for (CacheEntry *e = CacheHead; e != NULL; e = e->next)
		ConfigFreeKeys(&e->cfg);	/* contexts go with the reset below */
	CacheHead = NULL;
	if (CacheCxt)
		MemoryContextReset(CacheCxt);
	ConfigRelid = InvalidOid;
	CertRelid = InvalidOid;
	CacheStale = false;
}

/*
 * Forget every parsed config: the next lookup reads the table again.  For
 * the queue worker, which learns of a committed change (shmem.c) a moment
 * before the change's cache invalidation arrives.
 */
void
wxpay_config_invalidate(void)
{
	CacheStale = true;
}

/*
 * The parsed config called name, loading it on first use.  Errors:
 * 42704 when there is no such config, WX001 when it is unusable, including
 * when it has no key to verify answers with.
 */
const WxpayConfig *
wxpay_config_get(const char *name, Oid nspoid)
{
	const WxpayConfig *cfg = wxpay_config_get_signing(name, nspoid);

	if (cfg->nkeys == 0)
		wxpay_config_no_key_error(name,
								  "Neither wechatpay_public_key nor an unexpired platform certificate is configured.");
	return cfg;
}

/*
 * The one error for a config with no key to verify WeChat Pay's answers
 * with (WX001, nothing sent); detail says what is missing.
 */
void
wxpay_config_no_key_error(const char *name, const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
			 errmsg("wxpay configuration \"%s\" has no key to verify WeChat Pay's answers", name),
			 errdetail_internal("%s", detail),
			 errhint("Run SELECT * FROM wxpay_refresh_platform_certificates(%s) to download the platform certificates (it needs apiv3_key; with the extension preloaded the queue worker repeats it every wxpay.certificate_refresh_interval), or set wechatpay_public_key_id and wechatpay_public_key for public-key mode.",
					 quote_literal_cstr(name))));
	pg_unreachable();
}


/*
 * The same, but a config without any verification key is returned (nkeys
 * is then 0): for calls that verify the answer with keys of their own, such
 * as the first download of the platform certificates.
 */
const WxpayConfig *
wxpay_config_get_signing(const char *name, Oid nspoid)
{
	CacheEntry *e;

	/* see changes committed since our last command, even mid-transaction */
	AcceptInvalidationMessages();
	/* a changed root key setting: open the sealed keys again */
	if (wxpay_rootkey_generation() != CacheRootKeyGen)
	{
		CacheStale = true;
		CacheRootKeyGen = wxpay_rootkey_generation();
	}
	if (CacheStale)
		ConfigFreeAll();

	for (e = CacheHead; e != NULL; e = e->next)
	{
		if (strcmp(e->cfg.name, name) == 0)
			return &e->cfg;
	}

	if (CacheCxt == NULL)
		CacheCxt = AllocSetContextCreate(TopMemoryContext,
										 "wxpay config cache",
										 ALLOCSET_SMALL_SIZES);

	e = ConfigLoad(name, nspoid);
	e->next = CacheHead;
	CacheHead = e;
	return &e->cfg;
}

/*
 * The key that verifies an answer signed under the serial (Wechatpay-Serial),
 * or NULL.  Certificates count only inside their validity period.  A NULL
 * serial asks for any key usable now.
 */
const WxpayVerifyKey *
wxpay_config_find_key(const WxpayConfig *cfg, const char *serial,
					  TimestampTz now)
{
	for (int i = 0; i < cfg->nkeys; i++)
	{
		const WxpayVerifyKey *k = &cfg->keys[i];

		if (serial != NULL && pg_strcasecmp(k->serial, serial) != 0)
			continue;
		if (now < k->not_before || now >= k->not_after)
			continue;
		return k;
	}
	return NULL;
}

/* There is no config of that name: 42704. */
void
wxpay_config_missing(const char *name)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("wxpay configuration \"%s\" does not exist", name),
			 errhint("Add a row to wxpay_config, or pass the name of an existing one as config_name.")));
}

/*
 * The extension's schema (nspoid), quoted for SQL text: every statement on
 * our tables names them through it, never through search_path.
 */
char *
wxpay_schema_quoted(Oid nspoid)
{
	char	   *nspname = get_namespace_name(nspoid);

	if (nspname == NULL)
		elog(ERROR, "cache lookup failed for namespace %u", nspoid);
	return pstrdup(quote_identifier(nspname));
}

/*
 * How many configs wxpay_config holds, read with SPI (connected by the
 * caller) in the caller's snapshot.  The queue worker keeps slots free for
 * the others whenever there is more than one.
 */
int
wxpay_config_count(Oid nspoid)
{
	char	   *sql = psprintf("SELECT pg_catalog.count(*) FROM %s.wxpay_config",
							   wxpay_schema_quoted(nspoid));
	bool		isnull;
	int64		n;
	int			rc;

	rc = SPI_execute(sql, true, 1);
	if (rc != SPI_OK_SELECT || SPI_processed != 1)
		wxpay_spi_error("SPI_execute", rc);
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
									1, &isnull));
	pfree(sql);
	return (int) Min(n, (int64) INT_MAX);
}

/* SPI_connect, failing in one way everywhere. */
void
wxpay_spi_connect(void)
{
	int			rc = SPI_connect();

	if (rc != SPI_OK_CONNECT)
		wxpay_spi_error("SPI_connect", rc);
}

/* A text column of an SPI row as a C string in the current context, or NULL. */
char *
wxpay_spi_text(HeapTuple tup, TupleDesc desc, int attno)
{
	bool		isnull;
	Datum		d = SPI_getbinval(tup, desc, attno, &isnull);

	if (isnull)
		return NULL;
	return TextDatumGetCString(d);
}

/* Zero a palloc'd copy of secret text, then free it. */
void
wxpay_secret_free(char *s)
{
	if (s)
	{
		explicit_bzero(s, strlen(s));
		pfree(s);
	}
}

static void
ConfigKeyFailed(const char *name, const char *what, WxpayKeyError *err)
{
	/* err->msg starts lower-case; a detail is a sentence */
	err->msg[0] = pg_toupper((unsigned char) err->msg[0]);
	if (err->lib[0])
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("wxpay configuration \"%s\" has an unusable %s", name, what),
				 errdetail_internal("%s: %s.", err->msg, err->lib),
				 errhint("Store the PEM file's text exactly as downloaded from the merchant platform.")));
	ereport(ERROR,
			(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
			 errmsg("wxpay configuration \"%s\" has an unusable %s", name, what),
			 errdetail("%s.", err->msg)));
}

/*
 * Run a read-only query with the config name as $1 under the latest
 * snapshot (a config committed a moment ago is seen), at most limit rows
 * (0: all); the rows are in SPI_tuptable.
 */
static void
ConfigSelectLatest(const char *sql, const char *name, long limit)
{
	Oid			argtype = TEXTOID;
	Datum		arg = CStringGetTextDatum(name);
	SPIPlanPtr	plan;
	int			rc;

	plan = SPI_prepare(sql, 1, &argtype);
	if (plan == NULL)
		wxpay_spi_error("SPI_prepare", SPI_result);
	rc = SPI_execute_snapshot(plan, &arg, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, limit);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute_snapshot", rc);
}

/*
 * Read the config row and its platform certificates as the function owner,
 * under the latest snapshot, and parse them into a new cache entry with a
 * memory context of its own, so that a failed load leaves nothing behind.
 */
static CacheEntry *
ConfigLoad(const char *name, Oid nspoid)
{
	const char *qnsp;
	StringInfoData sql;
	MemoryContext cxt;
	MemoryContext spicxt;
	CacheEntry *volatile e;

	qnsp = wxpay_schema_quoted(nspoid);

	ConfigRelid = get_relname_relid("wxpay_config", nspoid);
	CertRelid = get_relname_relid("wxpay_platform_certificate", nspoid);

	wxpay_spi_connect();
	spicxt = CurrentMemoryContext;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "SELECT mchid, serial_no, private_key, wechatpay_public_key_id, "
					 "wechatpay_public_key, base_url, ca_cert, backup_base_url "
					 "FROM %s.wxpay_config WHERE name OPERATOR(pg_catalog.=) $1",
					 qnsp);
	ConfigSelectLatest(sql.data, name, 1);
	if (SPI_processed == 0)
		wxpay_config_missing(name);

	cxt = AllocSetContextCreate(CacheCxt, "wxpay config", ALLOCSET_SMALL_SIZES);
	MemoryContextSwitchTo(cxt);
	e = palloc0(sizeof(CacheEntry));
	e->cxt = cxt;

	PG_TRY();
	{
		WxpayConfig *cfg = &e->cfg;

		ConfigParse(name, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, cfg);

		MemoryContextSwitchTo(spicxt);
		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "SELECT serial_no, certificate, effective_time, expire_time "
						 "FROM %s.wxpay_platform_certificate "
						 "WHERE config_name OPERATOR(pg_catalog.=) $1",
						 qnsp);
		ConfigSelectLatest(sql.data, name, 0);

		MemoryContextSwitchTo(cxt);
		ConfigParseCertificates(name, cfg, (int) SPI_processed,
								SPI_tuptable->vals, SPI_tuptable->tupdesc);
	}
	PG_CATCH();
	{
		ConfigFreeKeys(&e->cfg);
		MemoryContextSwitchTo(spicxt);
		MemoryContextDelete(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();

	MemoryContextSwitchTo(spicxt);
	SPI_finish();
	return e;
}

/*
 * Refuse serial_no s of config name, saying what is wrong with it: the
 * "serial=" prefix and the colons that openssl prints are the usual slips.
 */
static void
ConfigBadSerial(const char *name, const char *s)
{
	char		buf[128];
	const char *detail;
	const char *hint;

	if (pg_strncasecmp(s, "serial=", 7) == 0)
	{
		detail = "The value starts with \"serial=\", the label \"openssl x509 -serial\" prints before the number.";
		hint = "Remove the \"serial=\" prefix and store only the hexadecimal digits that follow it.";
	}
	else if (strchr(s, ':') != NULL)
	{
		detail = "The value contains colons; a serial number is hexadecimal digits alone.";
		hint = "Remove the colons, or copy the digits that \"openssl x509 -noout -serial -in apiclient_cert.pem\" prints after \"serial=\".";
	}
	else
	{
		snprintf(buf, sizeof(buf),
				 "The merchant certificate serial number must be 1 to %d hexadecimal digits.",
				 WXPAY_SERIAL_MAX);
		detail = buf;
		hint = "Copy it from the merchant platform, or take the digits that \"openssl x509 -noout -serial -in apiclient_cert.pem\" prints after \"serial=\".";
	}
	ereport(ERROR,
			(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
			 errmsg("wxpay configuration \"%s\" has an invalid serial_no", name),
			 errdetail("%s", detail),
			 errhint("%s", hint)));
}

/* Parse one wxpay_config row; runs in CacheCxt. */
static void
ConfigParse(const char *name, HeapTuple tup, TupleDesc desc, WxpayConfig *cfg)
{
	char	   *mchid = wxpay_spi_text(tup, desc, 1);
	char	   *serial = wxpay_spi_text(tup, desc, 2);
	char	   *pem = wxpay_spi_text(tup, desc, 3);
	char	   *pubkey_id = wxpay_spi_text(tup, desc, 4);
	char	   *pubkey_pem = wxpay_spi_text(tup, desc, 5);
	char	   *base_url = wxpay_spi_text(tup, desc, 6);
	char	   *ca_cert = wxpay_spi_text(tup, desc, 7);
	char	   *backup_base_url = wxpay_spi_text(tup, desc, 8);
	WxpayKeyError err;
	char		why[256];

	cfg->name = pstrdup(name);

	if (!wxpay_check_mchid(mchid))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("wxpay configuration \"%s\" has an invalid mchid", name),
				 errdetail("A merchant number consists of 1 to 32 digits.")));
	cfg->mchid = mchid;

	if (!wxpay_check_serial(serial))
		ConfigBadSerial(name, serial);
	for (char *p = serial; *p; p++)
		*p = pg_toupper((unsigned char) *p);
	cfg->serial_no = serial;

	cfg->base_url = wxpay_validate_base_url(base_url, why, sizeof(why));
	if (cfg->base_url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("wxpay configuration \"%s\" has an invalid base_url", name),
				 errdetail("%s", why)));

	if (backup_base_url != NULL)
	{
		cfg->backup_base_url = wxpay_validate_base_url(backup_base_url, why, sizeof(why));
		if (cfg->backup_base_url == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
					 errmsg("wxpay configuration \"%s\" has an invalid backup_base_url", name),
					 errdetail("%s", why),
					 errhint("Set it to an https:// URL with a host and an optional port, or to NULL to disable failover.")));
	}

	if (ca_cert != NULL)
	{
		cfg->ca_cert = ca_cert;
		cfg->ca_cert_len = strlen(ca_cert);
	}

	if ((pubkey_id == NULL) != (pubkey_pem == NULL))
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("wxpay configuration \"%s\" has an incomplete WeChat Pay public key", name),
				 errdetail("wechatpay_public_key_id and wechatpay_public_key must both be set or both be NULL.")));

	/* from here on OpenSSL objects are held; ConfigLoad frees on error */
	cfg->keys = palloc0(sizeof(WxpayVerifyKey) * 1);
	if (pubkey_id != NULL)
	{
		WxpayVerifyKey *k = &cfg->keys[0];

		if (!wxpay_check_pubkey_id(pubkey_id))
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
					 errmsg("wxpay configuration \"%s\" has an invalid wechatpay_public_key_id", name),
					 errdetail("A WeChat Pay public key ID is \"PUB_KEY_ID_\" followed by digits.")));
		k->pkey = wxpay_load_public_key(pubkey_pem, strlen(pubkey_pem), &err);
		if (k->pkey == NULL)
			ConfigKeyFailed(name, "wechatpay_public_key", &err);
		k->serial = pubkey_id;
		k->not_before = DT_NOBEGIN;
		k->not_after = DT_NOEND;
		cfg->nkeys = 1;
	}

	/* sealed at rest (rootkey.c): opened here, so cached once parsed */
	{
		char	   *plain = wxpay_config_open_secret(name, "private_key", pem);

		wxpay_secret_free(pem);
		pem = plain;
	}
	cfg->private_key = wxpay_load_private_key(pem, strlen(pem), &err);
	wxpay_secret_free(pem);
	if (cfg->private_key == NULL)
		ConfigKeyFailed(name, "private_key", &err);
}

/* Parse the platform certificates of one config; runs in CacheCxt. */
static void
ConfigParseCertificates(const char *name, WxpayConfig *cfg,
						int ncerts, HeapTuple *tups, TupleDesc desc)
{
	TimestampTz now = GetCurrentTimestamp();
	WxpayVerifyKey *keys;

	keys = palloc0(sizeof(WxpayVerifyKey) * (cfg->nkeys + ncerts));
	if (cfg->nkeys > 0)
		keys[0] = cfg->keys[0];
	pfree(cfg->keys);
	cfg->keys = keys;

	for (int i = 0; i < ncerts; i++)
	{
		char	   *serial = wxpay_spi_text(tups[i], desc, 1);
		char	   *pem = wxpay_spi_text(tups[i], desc, 2);
		bool		isnull;
		Datum		d;
		WxpayVerifyKey *k = &cfg->keys[cfg->nkeys];
		char		actual[WXPAY_SERIAL_MAX + 1];
		WxpayKeyError err;
		TimestampTz nb,
					na;

		k->pkey = wxpay_load_certificate(pem, strlen(pem), actual, sizeof(actual),
										 &nb, &na, &err);
		if (k->pkey == NULL)
			ConfigKeyFailed(name, "platform certificate", &err);
		cfg->nkeys++;

		if (pg_strcasecmp(actual, serial) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
					 errmsg("wxpay configuration \"%s\" has a platform certificate under the wrong serial_no", name),
					 errdetail("Row serial_no \"%s\" holds the certificate with serial number \"%s\".",
							   serial, actual)));
		k->serial = pstrdup(actual);

		/* the tighter of the certificate's and the row's bounds */
		d = SPI_getbinval(tups[i], desc, 3, &isnull);
		k->not_before = isnull ? nb : Max(nb, DatumGetTimestampTz(d));
		d = SPI_getbinval(tups[i], desc, 4, &isnull);
		k->not_after = isnull ? na : Min(na, DatumGetTimestampTz(d));

		/* expired ones are kept out of the cache; rotation adds new rows */
		if (k->not_after <= now)
		{
			EVP_PKEY_free(k->pkey);
			k->pkey = NULL;
			cfg->nkeys--;
		}
	}
}
