/*-------------------------------------------------------------------------
 *
 * wxpay_signplan.h
 *	  Declarations shared by the modules of wxpay_signplan.
 *
 * The map of src/: one folder per layer, each file one job.  A file calls
 * only files of its own folder or of the folders listed above it; sql/ and
 * queue/ are peers that do not call each other.  test/static.sh fails on any
 * other call between files, and on a cycle inside a folder.
 *
 *	  protocol/protocol.c	pure WeChat Pay syntax: input rules, RFC 3339,
 *							Base64, header lines, mchid/serial/key ID rules,
 *							a notification's headers
 *							(no palloc, no ereport: fuzzable alone;
 *							declared in protocol/protocol.h)
 *	  runtime/			what every process shares
 *		shmem.c				the background processes' shared memory: one
 *							entry per database (its worker, its wakeups),
 *							the rate windows' area, the ProcessUtility hook
 *		waitevent.c			the named wait events of every wait
 *		stats.c				cumulative call statistics (wxpay_stat); callers
 *							classify, it counts
 *		spi.c				the one error for an SPI call that failed
 *		pinned.c			the settings the launcher and the worker pin
 *							against ALTER DATABASE/ROLE ... SET, and the
 *							check hook of the settings they rely on
 *	  wire/				signing, transport, response parsing
 *		sign.c				OpenSSL: keys, request signatures, answer
 *							verification, nonces
 *		transport.c			libcurl: one kept-alive multi handle, latch-aware
 *							waits, the timeouts
 *		encoding.c			what WeChat Pay sends (UTF-8) into the database
 *							encoding
 *		response.c			answer bodies to SQL values (jsonb, composites)
 *		seal.c				AES-256-GCM sealing under a root key and the
 *							sealed text form (keys at rest); pure of SQL
 *	  config/			config and keys
 *		config.c			the protected config tables and the per-backend
 *							key cache
 *		rootkey.c			keys at rest: the root key settings and command,
 *							the row trigger that seals private_key and
 *							apiv3_key, opening them, wxpay_seal_config
 *	  call/				the call: sign, send, verify, classify
 *		call.c				one signed, sent, verified call: the one classifier
 *							of an attempt's outcome and the one reporter of it
 *		certs.c				platform certificates: download, decrypt, verify,
 *							store (SQL function and the worker's C API)
 *		notify.c			WeChat Pay's notifications: headers, timestamp,
 *							serial, signature, then the AES-256-GCM resource
 *	  sql/				SQL entry points
 *		signplan.c			stop, query, signed_detail_list
 *		batch.c				wxpay_stop_sign_plans: many stops, one row each
 *		checkconfig.c		wxpay_check_config: each piece checked alone, and
 *							one live request
 *		dropguard.c			the event trigger that refuses to drop the
 *							extension while stop requests are to be sent
 *		notification.c		wxpay_verify_notification and
 *							wxpay_sign_plan_from_json (wxpay_accept_notification
 *							is PL/pgSQL in the install script)
 *	  queue/			the durable queue and the background processes
 *		queue.c				the one owner of wxpay_stop_request: its state
 *							machine, enqueue, wait, claim, record, reconcile
 *		pipeline.c			the sending pipeline: requests in flight across
 *							merchants, certificate refreshes among them
 *		ratelimit.c			the per-merchant rate limit, across databases
 *							(namehash.h: the worker's name-keyed local
 *							tables)
 *		worker.c			a database's queue worker: its loop, its errors,
 *							when it leaves
 *		launcher.c			the launcher: starts workers where there is work,
 *							within the cap; wxpay_queue_workers()
 *	  wxpay_signplan.c	_PG_init: calls each module's Init, which defines
 *						the settings that module reads
 *
 *-------------------------------------------------------------------------
 */
#ifndef WXPAY_SIGNPLAN_H
#define WXPAY_SIGNPLAN_H

#include <openssl/evp.h>

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "datatype/timestamp.h"
#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/jsonb.h"

#include "protocol/protocol.h"

#ifndef WXPAY_VERSION
#define WXPAY_VERSION "unknown"
#endif

/*
 * A function that never returns.  PostgreSQL 18 dropped the attribute
 * pg_attribute_noreturn() for pg_noreturn, a function specifier (C11
 * _Noreturn, or C23's [[noreturn]], which must open the declaration).  So it
 * goes first: "WXPAY_NORETURN extern void f(void);", where gcc accepts the
 * older attribute too.
 */
#if PG_VERSION_NUM >= 180000
#define WXPAY_NORETURN pg_noreturn
#else
#define WXPAY_NORETURN pg_attribute_noreturn()
#endif

/* Answers larger than this are refused while they arrive. */
#define WXPAY_MAX_RESPONSE_BYTES	(1024 * 1024)

/* An answer's timestamp must be within this many seconds of our clock. */
#define WXPAY_MAX_CLOCK_SKEW_SECS	300

/*
 * SQLSTATEs of our own, class WX.  Input errors use the standard 22004 and
 * 22023, an unknown config name 42704.
 */
#define ERRCODE_WXPAY_CONFIG_ERROR		MAKE_SQLSTATE('W','X','0','0','1')
#define ERRCODE_WXPAY_REQUEST_REJECTED	MAKE_SQLSTATE('W','X','0','0','2')
#define ERRCODE_WXPAY_OUTCOME_UNKNOWN	MAKE_SQLSTATE('W','X','0','0','3')
#define ERRCODE_WXPAY_REQUEST_NOT_SENT	MAKE_SQLSTATE('W','X','0','0','4')
/* a notification refused (call/notify.c; doc/reference.md lists them) */
#define ERRCODE_WXPAY_NOTIFY_SIGNATURE	MAKE_SQLSTATE('W','X','0','1','0')
#define ERRCODE_WXPAY_NOTIFY_SERIAL		MAKE_SQLSTATE('W','X','0','1','1')
#define ERRCODE_WXPAY_NOTIFY_STALE		MAKE_SQLSTATE('W','X','0','1','2')
#define ERRCODE_WXPAY_NOTIFY_PROBE		MAKE_SQLSTATE('W','X','0','1','3')
#define ERRCODE_WXPAY_NOTIFY_BODY		MAKE_SQLSTATE('W','X','0','1','4')
#define ERRCODE_WXPAY_NOTIFY_ALGORITHM	MAKE_SQLSTATE('W','X','0','1','5')
#define ERRCODE_WXPAY_NOTIFY_DECRYPT	MAKE_SQLSTATE('W','X','0','1','6')
#define ERRCODE_WXPAY_NOTIFY_NO_APIV3	MAKE_SQLSTATE('W','X','0','1','7')
#define ERRCODE_WXPAY_NOTIFY_HEADERS	MAKE_SQLSTATE('W','X','0','1','8')
#define ERRCODE_WXPAY_NOTIFY_TOO_LARGE	MAKE_SQLSTATE('W','X','0','1','9')

/* Notification bodies larger than this are refused before any work. */
#define WXPAY_MAX_NOTIFICATION_BYTES	(1024 * 1024)

/* ---------- spi.c ---------- */

WXPAY_NORETURN extern void wxpay_spi_error(const char *call, int rc);

/* ---------- waitevent.c ---------- */

/* What a process of the extension waits for (pg_stat_activity.wait_event) */
typedef enum WxpayWaitKind
{
	WXPAY_WAIT_ANSWER,			/* WeChat Pay's answer to a request */
	WXPAY_WAIT_BATCH,			/* the answers of wxpay_stop_sign_plans */
	WXPAY_WAIT_STOP_REQUEST,	/* the worker's outcome of a queued stop */
	WXPAY_WAIT_QUEUE_WAKEUP,	/* the worker, idle: work to be queued */
	WXPAY_WAIT_ERROR_PAUSE,		/* the worker, pausing after an error */
	WXPAY_WAIT_LAUNCHER,		/* the launcher, idle */
	WXPAY_WAIT_RATE_LIMIT,		/* the worker, holding back for the rate limit */
	WXPAY_WAIT_ROOT_KEY,		/* the root key command (config/rootkey.c) */
	WXPAY_NUM_WAIT_KINDS
} WxpayWaitKind;

extern uint32 wxpay_wait_event(WxpayWaitKind kind);

/* ---------- protocol.c: see protocol.h ---------- */

/* ---------- sign.c ---------- */

typedef struct WxpayKeyError
{
	char		msg[256];		/* our words: what is wrong (lower-case start) */
	char		lib[256];		/* OpenSSL's words, for errdetail_internal */
} WxpayKeyError;

extern EVP_PKEY *wxpay_load_private_key(const char *pem, size_t len,
										WxpayKeyError *err);
extern EVP_PKEY *wxpay_load_public_key(const char *pem, size_t len,
									   WxpayKeyError *err);
extern EVP_PKEY *wxpay_load_certificate(const char *pem, size_t len,
										char *serial_hex, size_t serial_cap,
										TimestampTz *not_before,
										TimestampTz *not_after,
										WxpayKeyError *err);
extern void wxpay_make_nonce(char *out);
extern char *wxpay_sign_base64(EVP_PKEY *key, const char *msg, size_t len,
							   WxpayKeyError *err);
extern bool wxpay_verify_base64(EVP_PKEY *key, const char *msg, size_t len,
								const char *sig_b64, size_t sig_len);
extern int	wxpay_count_certificates(const char *pem, size_t len,
									 WxpayKeyError *err);

#define WXPAY_APIV3_KEY_LEN		32
#define WXPAY_GCM_NONCE_LEN		12
#define WXPAY_GCM_TAG_LEN		16

extern char *wxpay_aes256gcm_decrypt(const unsigned char *key, size_t keylen,
									 const char *nonce, size_t noncelen,
									 const char *aad, size_t aadlen,
									 const unsigned char *in, size_t inlen,
									 size_t *outlen, WxpayKeyError *err);

/* ---------- seal.c ---------- */

#define WXPAY_ROOT_KEY_LEN		32
#define WXPAY_SEAL_FP_LEN		16	/* hex digits of a root key's fingerprint */
#define WXPAY_SEAL_PREFIX		"wxsealed:"

extern void wxpay_seal_fingerprint(const unsigned char *key, char *out);
extern bool wxpay_seal_is_sealed(const char *s);
extern bool wxpay_seal_parse(const char *s, char *fp, const char **payload);
extern char *wxpay_seal(const unsigned char *key, const char *aad, size_t aadlen,
						const char *plain, size_t len, WxpayKeyError *err);
extern char *wxpay_seal_open(const unsigned char *key, const char *aad,
							 size_t aadlen, const char *payload,
							 size_t *outlen, WxpayKeyError *err);

/* ---------- rootkey.c ---------- */

extern char *wxpay_root_key_command;
extern char *wxpay_previous_root_key_command;
extern bool wxpay_config_rootkey_failed;

extern void RootKeyInit(void);
extern bool wxpay_rootkey_configured(void);
extern uint64 wxpay_rootkey_generation(void);
extern char *wxpay_config_open_secret(const char *name, const char *column,
									  const char *stored);
extern char *wxpay_config_try_open_secret(const char *name, const char *column,
										  const char *stored, char **why);
extern int	wxpay_config_keys_at_rest(const char *private_key,
									  const char *apiv3_key, char **text);

/* ---------- config.c ---------- */

typedef struct WxpayVerifyKey
{
	char	   *serial;			/* upper-case hex or PUB_KEY_ID_... */
	EVP_PKEY   *pkey;
	TimestampTz not_before;		/* DT_NOBEGIN when unbounded */
	TimestampTz not_after;		/* DT_NOEND when unbounded */
} WxpayVerifyKey;

typedef struct WxpayConfig
{
	char	   *name;
	char	   *mchid;
	char	   *serial_no;		/* upper-case hex */
	EVP_PKEY   *private_key;
	char	   *base_url;		/* https://host[:port], no trailing slash */
	char	   *backup_base_url;	/* the same form, or NULL: no failover */
	char	   *ca_cert;		/* PEM bundle or NULL for the system store */
	size_t		ca_cert_len;
	int			nkeys;
	WxpayVerifyKey *keys;
} WxpayConfig;

extern void ConfigInit(void);
WXPAY_NORETURN extern void wxpay_config_missing(const char *name);
extern char *wxpay_schema_quoted(Oid nspoid);
extern int	wxpay_config_count(Oid nspoid);
extern void wxpay_spi_connect(void);
WXPAY_NORETURN extern void wxpay_config_no_key_error(const char *name,
												 const char *detail);
extern char *wxpay_spi_text(HeapTuple tup, TupleDesc desc, int attno);
extern void wxpay_secret_free(char *s);
extern void wxpay_config_invalidate(void);
extern const WxpayConfig *wxpay_config_get(const char *name, Oid nspoid);
extern const WxpayConfig *wxpay_config_get_signing(const char *name,
												   Oid nspoid);
extern const WxpayVerifyKey *wxpay_config_find_key(const WxpayConfig *cfg,
												   const char *serial,
												   TimestampTz now);

/* ---------- transport.c ---------- */

extern int	wxpay_connect_timeout;	/* ms */
extern int	wxpay_request_timeout;	/* ms */

typedef enum WxpayTransportOutcome
{
	WXPAY_TRANSPORT_ANSWERED,	/* a complete HTTP answer arrived */
	WXPAY_TRANSPORT_NOT_SENT,	/* failed before any request byte left */
	WXPAY_TRANSPORT_FAILED		/* failed after the request may have left */
} WxpayTransportOutcome;

typedef struct WxpayHttpRequest
{
	/* filled by the caller */
	const char *method;			/* "POST" or "GET" */
	const char *url;
	const char *backup_url;		/* the same request at the backup domain, or
								 * NULL; tried only when url fails before
								 * anything was sent (wxpay_http_perform) */
	const char *authorization;	/* full header line, secret-free */
	const char *body;			/* NULL for GET */
	size_t		body_len;
	const char *ca_cert;		/* PEM bundle or NULL */
	size_t		ca_cert_len;

	/* filled by the transport */
	WxpayTransportOutcome outcome;
	char		errbuf[256];	/* libcurl's words, for errdetail_internal */
	bool		too_large;		/* answer exceeded WXPAY_MAX_RESPONSE_BYTES */
	bool		timed_out;
	int			nsends;			/* times libcurl was about to send it */
	bool		failed_over;	/* url failed before sending; went to backup_url */
	char		primary_errbuf[256];	/* libcurl's words about url, when
										 * failed_over */
	TimestampTz started;		/* when the transport took it */
	int64		elapsed_us;		/* the whole exchange, a failover included;
								 * -1 until it ended */
	long		status;
	char	   *resp;			/* NUL-terminated, palloc'd */
	size_t		resp_len;
	size_t		resp_cap;
	MemoryContext resp_cxt;
	WxpayHeaderValue h_timestamp;
	WxpayHeaderValue h_nonce;
	WxpayHeaderValue h_signature;
	WxpayHeaderValue h_serial;
	WxpayHeaderValue h_request_id;
} WxpayHttpRequest;

extern void TransportInit(void);
extern char *wxpay_validate_base_url(const char *url, char *why, size_t whylen);
extern void wxpay_http_perform(WxpayHttpRequest **reqs, int nreqs,
							   int concurrency);

/* a stream of requests: next() returns NULL when there are no more */
typedef WxpayHttpRequest *(*WxpayHttpNext) (void *arg);
typedef void (*WxpayHttpDone) (WxpayHttpRequest *req, void *arg);

extern void wxpay_http_perform_stream(int concurrency, WxpayHttpNext next,
									  WxpayHttpDone done, void *arg);

/* a stream that may pause: NULL from poll() means "nothing now" */
typedef WxpayHttpRequest *(*WxpayHttpPoll) (void *arg, long *retry_ms);

extern void wxpay_http_perform_poll(int concurrency, WxpayHttpPoll poll,
									WxpayHttpDone done, void *arg);

/* ---------- encoding.c ---------- */

extern void wxpay_encoding_prepare(void);
extern char *wxpay_from_utf8(const char *s, size_t len, bool json,
							 size_t *outlen);
extern char *wxpay_to_utf8(const char *s, size_t len, size_t *outlen);

/* ---------- response.c ---------- */

extern Jsonb *wxpay_parse_jsonb(const char *body, size_t len, char **why);
extern bool wxpay_container_to_tuple(JsonbContainer *obj, TupleDesc tupdesc,
									 Datum *values, bool *nulls, char **why);
extern void wxpay_error_body(const char *body, size_t len,
							 char **code, char **message);

/* ---------- call.c ---------- */

#define WXPAY_PLAN_PATH	"/v3/payscore/sign-plan/user-sign-plans/merchant-sign-plan-no/"
/* a service provider's calls for a sub-merchant (partner mode) */
#define WXPAY_PARTNER_PLAN_PATH	"/v3/payscore/sign-plan/partner/user-sign-plans/merchant-sign-plan-no/"

/* What an attempt was for; messages and hints depend on it. */
typedef enum WxpayOperation
{
	WXPAY_OP_STOP,				/* POST .../{no}/stop */
	WXPAY_OP_QUERY,				/* GET .../{no} */
	WXPAY_OP_CERTIFICATES,		/* GET /v3/certificates */
	WXPAY_OP_CHECK				/* wxpay_check_config's live query */
} WxpayOperation;

/*
 * How one attempt ended: a row (ok), or everything a report needs.  The
 * one type for every door: stop, query, batch, the queue worker, the
 * certificate refresh and the live check.  Filled only by
 * wxpay_classify_attempt() (and, for a verified answer that cannot be
 * used, by its reader through wxpay_result_fail()); turned into an
 * ereport or a row's text only by wxpay_report() / wxpay_report_text().
 * All text is in the database encoding.
 */
typedef struct WxpayCallResult
{
	bool		ok;
	HeapTuple	tuple;			/* when ok, for stop and query */
	int			sqlstate;		/* when not ok */
	char	   *message;		/* primary message */
	char	   *detail;			/* complete sentences; may quote libcurl */
	char	   *hint;
	long		http_status;	/* 0 when no answer */
	char	   *error_code;		/* platform's code, or NULL */
	char	   *error_message;	/* platform's message, or NULL */
	char	   *request_id;		/* Request-ID header, or NULL */
	const char *sent_to;		/* base URL the request went to, or NULL
								 * when nothing was sent */
	bool		failed_over;	/* it went to the backup domain */
	bool		classified;		/* filled by wxpay_classify_attempt (not
								 * an error caught elsewhere) */
} WxpayCallResult;

/*
 * Reads a verified 2xx answer (the signature checked when
 * WxpayAttempt.verify_cfg is set).  Returns true when the answer is
 * usable; otherwise false after wxpay_result_fail(res, ...), or with *why
 * (a lower-case clause) for "the verified answer could not be read".
 */
typedef bool (*WxpayAnswerReader) (void *arg, WxpayHttpRequest *req,
								   WxpayCallResult *res, char **why);

/* One finished request, as the classifier needs it. */
typedef struct WxpayAttempt
{
	WxpayOperation op;
	const char *subject;		/* the plan number, or the config name */
	const char *sub_mchid;		/* stop, query: a sub-merchant's plan, or
								 * NULL */
	const char *base_url;		/* where it was meant to go */
	const char *backup_base_url;	/* or NULL */
	WxpayHttpRequest *req;
	const WxpayConfig *verify_cfg;	/* verify 2xx answers with its keys;
									 * NULL: the reader verifies */
	WxpayAnswerReader read;		/* or NULL: a verified 2xx is ok */
	void	   *read_arg;
} WxpayAttempt;

typedef struct WxpayCall
{
	WxpayOperation op;
	const char *plan_no;
	const char *stop_reason;	/* UTF-8, for WXPAY_OP_STOP */
	const char *sub_mchid;		/* NULL: the config's own plan; else the
								 * partner endpoint for this sub-merchant
								 * (wxpay_call_prepare checks it: 22023) */
	const WxpayConfig *cfg;
	WxpayHttpRequest req;
} WxpayCall;

extern bool wxpay_classify_attempt(const WxpayAttempt *a, WxpayCallResult *res);
extern void wxpay_result_fail(WxpayCallResult *res, int sqlstate,
							  const char *detail, const char *hint);
extern void wxpay_report(const WxpayCallResult *res, int elevel);
extern char *wxpay_report_text(const WxpayCallResult *res);

extern char *wxpay_config_name_arg(FunctionCallInfo fcinfo, int argno);
extern const WxpayConfig *wxpay_resolve_config(FunctionCallInfo fcinfo,
											   int argno);
extern void wxpay_check_plan_no_arg(const char *plan_no);
extern char *wxpay_check_stop_reason_arg(text *reason);
extern char *wxpay_sub_mchid_arg(FunctionCallInfo fcinfo, int argno);
extern void wxpay_check_sub_mchid_arg(const char *sub_mchid);
extern void wxpay_request_sign(const WxpayConfig *cfg, const char *method,
							   const char *path, const char *body,
							   size_t body_len, WxpayHttpRequest *req);
extern bool wxpay_answer_check_headers(WxpayHttpRequest *req, char **why);
extern bool wxpay_answer_check_signature(WxpayHttpRequest *req, EVP_PKEY *key);
extern bool wxpay_answer_verify(const WxpayConfig *cfg, WxpayHttpRequest *req,
								char **why);
extern void wxpay_call_prepare(WxpayCall *call);
extern bool wxpay_call_finish(WxpayCall *call, TupleDesc tupdesc,
							  WxpayCallResult *res);

/* ---------- certs.c ---------- */

extern int	wxpay_certificate_refresh_interval;	/* seconds, 0 = off */

extern void CertsInit(void);
/*
 * Refreshing the platform certificates of one config, in three phases so
 * that no transaction is open during network I/O (the background worker)
 * while the SQL function runs the same code in one transaction:
 *
 *	 WxpayCertRefresh r;
 *
 *	 (1) in a transaction:
 *		 wxpay_cert_refresh_prepare(&r, name, nspoid, cxt);
 *	   Reads the config (wxpay_config_get_signing) and builds the signed
 *	   GET /v3/certificates.  Everything later phases use is copied into
 *	   cxt (a context the caller owns and resets), so the transaction may
 *	   end afterwards.  ereports ERROR when the config cannot be used:
 *	   42704 no such config, WX001 unusable key or no apiv3_key.  The
 *	   worker runs it under its usual PG_TRY/abort recovery.
 *	 (2) outside any transaction (or inside; no catalog access):
 *		 wxpay_cert_refresh_send(&r);
 *	   One HTTPS request (wxpay_http_perform).  Honours cancel and
 *	   ProcDiePending like any request (may ereport for those only).
 *	 (3) in a new transaction:
 *		 if (!wxpay_cert_refresh_finish(&r)) wxpay_report(&r.result, ...)
 *	   Verifies the answer, decrypts each certificate with the config's
 *	   apiv3_key (read now, zeroed after use), checks that the answer is
 *	   signed by a certificate it contains or one already held, then
 *	   upserts wxpay_platform_certificate and deletes the held ones that
 *	   have expired.  Any failure before the upsert changes nothing and is
 *	   returned in r.result (classified by wxpay_classify_attempt, like any
 *	   call) rather than raised; SPI errors still raise.
 *
 * wxpay_cert_refresh_configs() lists the configs the worker should refresh
 * (those with an apiv3_key), in a transaction.  The worker refreshes each
 * every wxpay.certificate_refresh_interval seconds (0 = never); after a
 * failure it may retry sooner, but the certificates held stay usable until
 * they expire, so there is no hurry.
 */
typedef struct WxpayCertInfo
{
	char	   *serial_no;		/* upper-case hex */
	TimestampTz effective_time;
	TimestampTz expire_time;
	bool		is_new;			/* not held before this refresh */
} WxpayCertInfo;

typedef struct WxpayCertRefresh
{
	/* phase 1: everything in the caller's context */
	MemoryContext cxt;
	char	   *config_name;
	Oid			nspoid;
	char	   *base_url;		/* for messages */
	char	   *backup_base_url;	/* or NULL */
	WxpayHttpRequest req;		/* the signed GET; phase 2 fills the answer */

	/* phase 3: the outcome */
	WxpayCallResult result;		/* ok, or the failure (wxpay_report) */
	int			ncerts;			/* when ok: what is held now */
	WxpayCertInfo *certs;
} WxpayCertRefresh;

extern void wxpay_cert_refresh_prepare(WxpayCertRefresh *r,
									   const char *config_name, Oid nspoid,
									   MemoryContext cxt);
extern void wxpay_cert_refresh_send(WxpayCertRefresh *r);
extern bool wxpay_cert_refresh_finish(WxpayCertRefresh *r);
extern List *wxpay_cert_refresh_configs(Oid nspoid);
/* ---------- notify.c ---------- */

/*
 * A verified, decrypted notification.  Text in the database encoding;
 * summary NULL when the body has none; resource the decrypted JSON.
 */
typedef struct WxpayNotification
{
	char	   *id;
	TimestampTz create_time;
	char	   *event_type;
	char	   *resource_type;
	char	   *summary;
	Jsonb	   *resource;
} WxpayNotification;

extern void wxpay_notify_verify(const char *config_name, Oid nspoid,
								Jsonb *headers, const char *body,
								size_t body_len, WxpayNotification *out);

/* ---------- shmem.c ---------- */

/* GUC variables of the background processes */
extern char *wxpay_database_name;
extern int	wxpay_max_workers;
extern int	wxpay_worker_idle_timeout;	/* s */

/* what a wakeup is about; each has a generation counter */
typedef enum WxpayWake
{
	WXPAY_WAKE_QUEUE,			/* requests may be due */
	WXPAY_WAKE_KEYS,			/* wxpay_config or its certificates changed */
	WXPAY_WAKE_CONFIG,			/* wxpay_config changed: refresh at once */
	WXPAY_NUM_WAKES
} WxpayWake;

/* is the extension installed in a database? */
typedef enum WxpayExtState
{
	WXPAY_EXT_UNKNOWN,			/* a worker will look */
	WXPAY_EXT_PRESENT,
	WXPAY_EXT_ABSENT			/* no worker until a wake there */
} WxpayExtState;

/* databases the launcher keeps track of at once */
#define WXPAY_MAX_DATABASES		1024

/* the rate windows' shared area (ratelimit.c lays it out) */
#define WXPAY_RATE_MERCHANTS	256
#define WXPAY_RATE_SLOTS		64
#define WXPAY_RATE_AREA_SIZE	(WXPAY_RATE_MERCHANTS * (64 + 16 + WXPAY_RATE_SLOTS * 8))

/*
 * When a config's platform certificates are next due, remembered across
 * the on-demand workers of one database (shmem.c): valid while the
 * database's config generation is the one recorded.
 */
#define WXPAY_CERT_MEMOS		8
#define WXPAY_CERT_MEMO_NAME	64
typedef struct WxpayCertMemo
{
	char		name[WXPAY_CERT_MEMO_NAME]; /* "": a free slot */
	uint64		config_gen;		/* generation[WXPAY_WAKE_CONFIG] it holds for */
	TimestampTz next;			/* the next refresh is due then */
} WxpayCertMemo;

/*
 * One database, in shared memory (shmem.c).  Read and changed under the
 * entries' lock only.
 */
typedef struct WxpayDbEntry
{
	Oid			dboid;			/* InvalidOid: a free entry */
	bool		servable;		/* allows connections, not a template */
	bool		listed;			/* seen by the launcher's last look */
	WxpayExtState ext;
	/* its worker */
	pid_t		worker_pid;		/* serving now, or 0 */
	struct Latch *worker_latch;
	bool		starting;		/* started, entry not yet taken */
	TimestampTz starting_since;
	TimestampTz started_at;		/* of the worker serving now */
	bool		yield;			/* the launcher wants its place */
	bool		no_slot;		/* waits: max_worker_processes is exhausted */
	/* its work */
	bool		wake;			/* a backend asked for its worker */
	TimestampTz next_due;		/* when its next work is due (DT_NOEND) */
	uint64		generation[WXPAY_NUM_WAKES];
	/* how its last worker ended, for the launcher */
	bool		exit_pending;
	bool		exit_clean;		/* on purpose */
	bool		exit_connected; /* after connecting */
	bool		exit_idle;		/* nothing to do, or yielded */
	TimestampTz last_exit;
	TimestampTz retry_at;		/* after failures: not before */
	long		delay_ms;		/* the current backoff */
	bool		going;			/* being dropped / renamed / copied */
	TimestampTz going_since;
	bool		stayed;			/* ... and it stays: serve it at once */
	WxpayCertMemo certs[WXPAY_CERT_MEMOS];	/* kept across its workers */
} WxpayDbEntry;

extern void WorkerInit(void);
struct BackgroundWorker;
extern void wxpay_bgworker_init(struct BackgroundWorker *bgw, const char *function,
								const char *name, int restart_secs);
extern bool wxpay_worker_preloaded(void);
extern void wxpay_worker_wake(void);
extern void wxpay_worker_wake_at_commit(WxpayWake what);
extern void wxpay_worker_generations(uint64 *gens);
extern TimestampTz wxpay_worker_cert_recall(const char *name, uint64 config_gen);
extern void wxpay_worker_cert_remember(const char *name, uint64 config_gen,
									   TimestampTz next);
extern void wxpay_worker_prepare_wait(void);
extern void wxpay_worker_wait_finished(long timeout_ms);
extern void wxpay_worker_cancel_wait(void);
extern void wxpay_worker_broadcast_finished(void);
extern bool wxpay_worker_slot_take(Oid dboid);
extern void wxpay_worker_slot_report(bool connected, bool clean,
									 WxpayExtState ext);
extern bool wxpay_worker_take_wake(void);
extern bool wxpay_worker_yield_wanted(void);
extern bool wxpay_worker_leave(TimestampTz next_due, bool yielding);
extern void wxpay_worker_set_database(const char *name);
extern const char *wxpay_worker_database(void);
extern void wxpay_launcher_attach(void);
extern WxpayDbEntry *wxpay_db_entries(bool exclusive, bool *rescan,
									  pid_t *launcher_pid);
extern void wxpay_db_entries_done(void);
extern WxpayDbEntry *wxpay_db_entry_add(Oid dboid);
struct LWLock;
extern char *wxpay_rate_area(struct LWLock **lock);

/* ---------- pinned.c ---------- */

extern void wxpay_pinned_prepare(void);
extern void wxpay_pinned_apply(void);
extern bool wxpay_pinned_check_hook(int *newval, void **extra,
									GucSource source);

/* ---------- launcher.c ---------- */

extern PGDLLEXPORT void wxpay_launcher_main(Datum arg);

/* ---------- ratelimit.c ---------- */

extern int	wxpay_rate_limit;	/* per second per merchant */

extern void RateLimitInit(void);
extern bool wxpay_rate_take(const char *mchid, TimestampTz now, long *wait_ms);

/* ---------- queue.c ---------- */

extern int	wxpay_max_attempts;
extern int	wxpay_reconcile_delay;	/* ms */
extern int	wxpay_stop_request_retention;	/* s, 0 = keep */

extern void QueueInit(void);
/* a claimed request, as the pipeline gets it */
typedef struct WxpayQueueRow
{
	int64		id;
	char	   *config_name;
	char	   *plan_no;
	char	   *sub_mchid;		/* partner mode's sub-merchant, or NULL */
	text	   *stop_reason;
	int			attempts;		/* including this one */
	bool		unknown;		/* outcome_unknown before this claim, or
								 * written on another timeline */
} WxpayQueueRow;

typedef enum WxpayQueueFate
{
	WXPAY_QUEUE_SUCCEEDED,		/* finished: the plan is stopped */
	WXPAY_QUEUE_FAILED,			/* finished: not stopped (or WX003) */
	WXPAY_QUEUE_RETRY			/* queued again after delay_ms */
} WxpayQueueFate;

/* how one attempt ended, to be recorded */
typedef struct WxpayQueueOutcome
{
	int64		id;
	WxpayQueueFate fate;
	bool		unknown;		/* outcome_unknown from now on */
	long		delay_ms;		/* for WXPAY_QUEUE_RETRY */
	Datum		result;			/* composite, for WXPAY_QUEUE_SUCCEEDED */
	long		http_status;	/* 0: none */
	char	   *request_id;
	char	   *error_code;
	char	   *error_message;
} WxpayQueueOutcome;

extern Oid	wxpay_queue_schema(void);
extern Oid	wxpay_queue_home_other(Oid nspoid);
extern void wxpay_queue_home_error(int elevel, const char *dbname, Oid other);
extern char *wxpay_queue_table(Oid nspoid);
extern void wxpay_queue_reconcile(const char *q);
extern List *wxpay_queue_configs(const char *q);
extern int	wxpay_queue_claim(const char *q, const char *config_name,
							  int limit, WxpayQueueRow *rows);
extern void wxpay_queue_release(const char *q, WxpayQueueRow **rows, int n);
extern void wxpay_queue_defer(const char *q, WxpayQueueRow **rows, int n,
							  int delay_ms);
extern void wxpay_queue_record(const char *q, WxpayQueueOutcome *outs, int n,
							   Oid plan_type);
extern TimestampTz wxpay_queue_next_due(const char *q);
extern void wxpay_queue_purge(const char *q);

/* ---------- pipeline.c ---------- */

extern int	wxpay_worker_concurrency;
extern int	wxpay_retry_base_delay;	/* ms */
extern int	wxpay_retry_max_delay;	/* ms */

extern void PipelineInit(void);
extern int	wxpay_pipeline_run(Oid nspoid, MemoryContext cxt, long *sleep_ms);
extern TimestampTz wxpay_pipeline_next_work(void);
extern void wxpay_pipeline_abandon(void);

/* ---------- worker.c ---------- */

extern PGDLLEXPORT void wxpay_queue_worker_main(Datum arg);

/* ---------- stats.c ---------- */

/*
 * The recording API: one wxpay_stat_attempt() per finished call, from the
 * code that classified it.  stats.c depends on nothing above it.
 */
typedef enum WxpayStatOp
{
	WXPAY_STAT_STOP,
	WXPAY_STAT_QUERY,
	WXPAY_STAT_REFRESH,			/* platform certificate download */
	WXPAY_STAT_CHECK,			/* wxpay_check_config's live request */
	WXPAY_STAT_NUM_OPS
} WxpayStatOp;

typedef enum WxpayStatSource
{
	WXPAY_STAT_SESSION,			/* a SQL function, each batch element too */
	WXPAY_STAT_WORKER,			/* the background worker */
	WXPAY_STAT_NUM_SOURCES
} WxpayStatSource;

typedef enum WxpayStatOutcome
{
	WXPAY_STAT_SUCCEEDED,
	WXPAY_STAT_REJECTED,		/* WX002 */
	WXPAY_STAT_UNKNOWN,			/* WX003 */
	WXPAY_STAT_NOT_SENT,		/* WX004 */
	WXPAY_STAT_ERROR,			/* anything else: config, cancel, ... */
	WXPAY_STAT_NUM_OUTCOMES
} WxpayStatOutcome;

extern bool wxpay_track_stats;

extern void StatsInit(void);
extern void wxpay_stat_attempt(const char *config_name, WxpayStatOp op,
							   WxpayStatSource source,
							   WxpayStatOutcome outcome, bool failed_over,
							   int64 elapsed_us);
extern WxpayStatOutcome wxpay_stat_outcome(int sqlstate);
extern void wxpay_stat_error(const char *config_name, WxpayStatOp op,
							 WxpayStatSource source);
extern void wxpay_stat_call(const WxpayCall *call, WxpayStatSource source,
							bool ok, const WxpayCallResult *res);

/* ---------- batch.c ---------- */

extern int	wxpay_batch_concurrency;

extern void BatchInit(void);
/* most requests wxpay_stop_sign_plans keeps in flight (transport's pool) */
#define WXPAY_BATCH_CONCURRENCY_MAX	64

#endif							/* WXPAY_SIGNPLAN_H */
