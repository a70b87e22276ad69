/*-------------------------------------------------------------------------
 *
 * wxpay_signplan.h
 *	  Declarations shared by the modules of wxpay_signplan.
 *
 * The modules and their one job each:
 *	  wxpay_signplan.c	_PG_init and the GUCs
 *	  protocol.c		pure WeChat Pay syntax: input rules, RFC 3339, Base64,
 *						header lines (no palloc, no ereport: fuzzable alone)
 *	  sign.c			OpenSSL: keys, request signatures, answer verification
 *	  config.c			the protected config tables and the per-backend cache
 *	  transport.c		libcurl: one kept-alive multi handle, latch-aware waits
 *	  response.c		answer bodies to SQL values (jsonb, composites)
 *	  api.c				one signed, sent, verified call, and its error reports
 *	  signplan.c		SQL-callable entry points
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
#include "utils/jsonb.h"

#ifndef WXPAY_VERSION
#define WXPAY_VERSION "unknown"
#endif

/* pg_attribute_noreturn() is being replaced by pg_noreturn in newer servers */
#ifdef pg_attribute_noreturn
#define WXPAY_NORETURN pg_attribute_noreturn()
#else
#define WXPAY_NORETURN
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

/* GUC variables (wxpay_signplan.c) */
extern int	wxpay_connect_timeout;
extern int	wxpay_request_timeout;

/* ---------- protocol.c ---------- */

#define WXPAY_PLAN_NO_MAX			32
#define WXPAY_STOP_REASON_MAX		128
#define WXPAY_NONCE_LEN				32

typedef enum WxpayTextCheck
{
	WXPAY_TEXT_OK,
	WXPAY_TEXT_EMPTY,
	WXPAY_TEXT_TOO_LONG,
	WXPAY_TEXT_BAD_CHAR,		/* a character outside the allowed set */
	WXPAY_TEXT_FOUR_BYTE,		/* a 4-byte UTF-8 character */
	WXPAY_TEXT_BAD_UTF8,		/* not valid UTF-8 at all */
	WXPAY_TEXT_CONTROL			/* a NUL byte */
} WxpayTextCheck;

extern WxpayTextCheck wxpay_check_plan_no(const char *s, size_t len);
extern WxpayTextCheck wxpay_check_stop_reason(const char *s, size_t len);
extern bool wxpay_parse_rfc3339(const char *s, size_t len, TimestampTz *result);
extern size_t wxpay_base64_encoded_len(size_t srclen);
extern size_t wxpay_base64_encode(const unsigned char *src, size_t len, char *dst);
extern bool wxpay_base64_decode(const char *src, size_t len,
								unsigned char *dst, size_t dstcap, size_t *dstlen);
extern bool wxpay_parse_header_line(const char *line, size_t len,
									const char **name, size_t *namelen,
									const char **value, size_t *valuelen);
extern bool wxpay_parse_unix_seconds(const char *s, size_t len, int64 *result);
extern bool wxpay_is_hex(const char *s, size_t len);

/* The answer headers that verification needs (wxpay_answer_header()). */
typedef enum WxpayAnswerHeader
{
	WXPAY_H_TIMESTAMP,
	WXPAY_H_NONCE,
	WXPAY_H_SIGNATURE,
	WXPAY_H_SERIAL,
	WXPAY_H_REQUEST_ID,
	WXPAY_NUM_ANSWER_HEADERS
} WxpayAnswerHeader;

/* One answer header as it arrived. */
typedef struct WxpayHeaderValue
{
	int			count;			/* how many times the header came */
	bool		overlong;		/* a value did not fit or held a NUL byte */
	size_t		len;
	char		value[1024];
} WxpayHeaderValue;

extern int	wxpay_answer_header(const char *name, size_t len);
extern void wxpay_store_header(WxpayHeaderValue *h, const char *v, size_t len);

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
	char	   *ca_cert;		/* PEM bundle or NULL for the system store */
	size_t		ca_cert_len;
	int			nkeys;
	WxpayVerifyKey *keys;
} WxpayConfig;

extern void ConfigInit(void);
extern const WxpayConfig *wxpay_config_get(const char *name, Oid nspoid);
extern const WxpayVerifyKey *wxpay_config_find_key(const WxpayConfig *cfg,
												   const char *serial,
												   TimestampTz now);

/* ---------- transport.c ---------- */

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
extern const char *wxpay_user_agent(void);
extern char *wxpay_validate_base_url(const char *url, char *why, size_t whylen);
extern void wxpay_http_perform(WxpayHttpRequest **reqs, int nreqs,
							   int concurrency);

/* ---------- response.c ---------- */

extern Jsonb *wxpay_parse_jsonb(const char *body, size_t len, char **why);
extern bool wxpay_container_to_tuple(JsonbContainer *obj, TupleDesc tupdesc,
									 Datum *values, bool *nulls, char **why);
extern void wxpay_error_body(const char *body, size_t len,
							 char **code, char **message);

/* ---------- api.c ---------- */

typedef enum WxpayOperation
{
	WXPAY_OP_STOP,
	WXPAY_OP_QUERY
} WxpayOperation;

/* How one call ended: a row, or everything an error report needs. */
typedef struct WxpayCallResult
{
	bool		ok;
	HeapTuple	tuple;			/* when ok */
	int			sqlstate;		/* when not ok */
	char	   *message;		/* primary message */
	char	   *detail;			/* may quote libcurl's text */
	char	   *hint;
	long		http_status;	/* 0 when no answer */
	char	   *error_code;		/* platform's code, or NULL */
	char	   *error_message;	/* platform's message, or NULL */
	char	   *request_id;		/* Request-ID header, or NULL */
} WxpayCallResult;

typedef struct WxpayCall
{
	WxpayOperation op;
	const char *plan_no;
	const char *stop_reason;	/* UTF-8, for WXPAY_OP_STOP */
	const WxpayConfig *cfg;
	WxpayHttpRequest req;
} WxpayCall;

extern const WxpayConfig *wxpay_resolve_config(FunctionCallInfo fcinfo,
											   int argno);
extern void wxpay_check_plan_no_arg(const char *plan_no);
extern char *wxpay_check_stop_reason_arg(text *reason);
extern void wxpay_call_prepare(WxpayCall *call);
extern bool wxpay_call_finish(WxpayCall *call, TupleDesc tupdesc,
							  WxpayCallResult *res);
extern void wxpay_call_raise(WxpayCallResult *res) WXPAY_NORETURN;

#endif							/* WXPAY_SIGNPLAN_H */
