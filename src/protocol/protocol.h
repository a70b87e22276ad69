/*-------------------------------------------------------------------------
 *
 * protocol.h
 *	  Pure WeChat Pay syntax (protocol.c): input rules, RFC 3339, Base64,
 *	  header lines, and the rules for merchant numbers, serials and public
 *	  key IDs.  No palloc, no ereport, no OpenSSL or jsonb: the fuzz
 *	  targets (test/fuzz/) build with this header and protocol.c alone.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WXPAY_PROTOCOL_H
#define WXPAY_PROTOCOL_H

#include "datatype/timestamp.h"

#define WXPAY_PLAN_NO_MAX			32
#define WXPAY_STOP_REASON_MAX		128
#define WXPAY_SUB_MCHID_MAX			32
#define WXPAY_NONCE_LEN				32
#define WXPAY_MCHID_MAX				32
/* the longest certificate serial or public key ID, in characters */
#define WXPAY_SERIAL_MAX			128

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
extern WxpayTextCheck wxpay_check_sub_mchid(const char *s, size_t len);
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
extern bool wxpay_check_mchid(const char *s);
extern bool wxpay_check_serial(const char *s);
extern bool wxpay_check_pubkey_id(const char *s);

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

/*
 * A notification's headers (wxpay_notify_check_headers()): the four that
 * verification needs and the optional signature type, kept whatever the
 * letter case of their names, each value as it arrived.
 */
typedef enum WxpayNotifyHeader
{
	WXPAY_NH_TIMESTAMP,
	WXPAY_NH_NONCE,
	WXPAY_NH_SIGNATURE,
	WXPAY_NH_SERIAL,
	WXPAY_NH_SIGNATURE_TYPE,
	WXPAY_NUM_NOTIFY_HEADERS
} WxpayNotifyHeader;

/* The one signature type of APIv3. */
#define WXPAY_SIGNATURE_TYPE		"WECHATPAY2-SHA256-RSA2048"
/* Probe notifications carry signatures that begin so. */
#define WXPAY_PROBE_PREFIX			"WECHATPAY/SIGNTEST/"
/* The longest signature accepted, decoded (RSA 4096 and room to spare). */
#define WXPAY_SIGNATURE_MAX			1024

/* What is wrong with a notification's headers, in the order checked. */
typedef enum WxpayNotifyCheck
{
	WXPAY_NOTIFY_OK,
	WXPAY_NOTIFY_MISSING,		/* a required header is absent */
	WXPAY_NOTIFY_DUPLICATE,		/* a header came more than once */
	WXPAY_NOTIFY_NOT_TEXT,		/* a value too long or holding a NUL */
	WXPAY_NOTIFY_BAD_TIMESTAMP, /* not Unix seconds */
	WXPAY_NOTIFY_BAD_NONCE,		/* empty, or a byte outside printable ASCII */
	WXPAY_NOTIFY_BAD_TYPE,		/* Signature-Type other than APIv3's */
	WXPAY_NOTIFY_PROBE,			/* a WECHATPAY/SIGNTEST/ signature */
	WXPAY_NOTIFY_BAD_SIGNATURE, /* not Base64, or too long */
	WXPAY_NOTIFY_BAD_SERIAL		/* neither a serial nor a public key ID */
} WxpayNotifyCheck;

typedef struct WxpayNotifyHeaders
{
	WxpayHeaderValue h[WXPAY_NUM_NOTIFY_HEADERS];
	/* filled by wxpay_notify_check_headers() */
	int			failed;			/* the header that failed, or -1 */
	int64		timestamp;		/* when OK */
	unsigned char signature[WXPAY_SIGNATURE_MAX];	/* decoded, when OK */
	size_t		signature_len;
} WxpayNotifyHeaders;

extern int	wxpay_notify_header(const char *name, size_t len);
extern const char *wxpay_notify_header_name(int which);
extern WxpayNotifyCheck wxpay_notify_check_headers(WxpayNotifyHeaders *nh);

extern char *wxpay_trim_space(char *s, size_t *len);

#endif							/* WXPAY_PROTOCOL_H */
