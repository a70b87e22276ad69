/*-------------------------------------------------------------------------
 *
 * protocol.c
 *	  The syntax of WeChat Pay APIv3 that needs no server: input rules,
 *	  RFC 3339 timestamps, Base64, HTTP header lines.
 *
 * Everything here is a pure function over caller-owned buffers: no palloc,
 * no ereport, no global state.  That keeps it callable from libcurl
 * callbacks (where an ereport would longjmp through the library) and lets a
 * fuzzer link this file alone.  Callers turn the results into errors.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "datatype/timestamp.h"

#include "protocol.h"

static const char b64_alphabet[] =
"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* days before the first of each month in a common year */
static const int days_before_month[12] =
{0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334};

static bool
is_leap(int y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* leap years in [1, y) */
static int64
leaps_before(int y)
{
	int64		p = y - 1;

	return p / 4 - p / 100 + p / 400;
}

static bool
read_digits(const char *s, size_t len, size_t pos, int n, int *out)
{
	int			v = 0;

	if (pos + n > len)
		return false;
	for (int i = 0; i < n; i++)
	{
		char		c = s[pos + i];

		if (c < '0' || c > '9')
			return false;
		v = v * 10 + (c - '0');
	}
	*out = v;
	return true;
}

/*
 * Plan numbers: 1 to 32 characters from [0-9A-Za-z_*-].
 */
WxpayTextCheck
wxpay_check_plan_no(const char *s, size_t len)
{
	if (len == 0)
		return WXPAY_TEXT_EMPTY;
	if (len > WXPAY_PLAN_NO_MAX)
		return WXPAY_TEXT_TOO_LONG;
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
			  (c >= 'a' && c <= 'z') || c == '_' || c == '-' || c == '*'))
			return WXPAY_TEXT_BAD_CHAR;
	}
	return WXPAY_TEXT_OK;
}

/*
 * Sub-merchant numbers (a service provider's sub_mchid): 1 to 32 ASCII
 * digits.  They go into a JSON body and a query string unescaped, so
 * nothing else may pass.
 */
WxpayTextCheck
wxpay_check_sub_mchid(const char *s, size_t len)
{
	if (len == 0)
		return WXPAY_TEXT_EMPTY;
	if (len > WXPAY_SUB_MCHID_MAX)
		return WXPAY_TEXT_TOO_LONG;
	for (size_t i = 0; i < len; i++)
		if (s[i] < '0' || s[i] > '9')
			return WXPAY_TEXT_BAD_CHAR;
	return WXPAY_TEXT_OK;
}

/*
 * Stop reasons: UTF-8, 1 to 128 characters, none of 4 bytes (APIv3 refuses
 * them).  Validates UTF-8 strictly: no overlong forms, no surrogates.
 */
WxpayTextCheck
wxpay_check_stop_reason(const char *s, size_t len)
{
	size_t		i = 0;
	size_t		nchars = 0;
	bool		four_byte = false;

	if (len == 0)
		return WXPAY_TEXT_EMPTY;

	while (i < len)
	{
		unsigned char c = (unsigned char) s[i];
		int			n;
		unsigned int cp;

		if (c == 0)
			return WXPAY_TEXT_CONTROL;
		if (c < 0x80)
		{
			n = 1;
			cp = c;
		}
		else if ((c & 0xE0) == 0xC0)
		{
			n = 2;
			cp = c & 0x1F;
		}
		else if ((c & 0xF0) == 0xE0)
		{
			n = 3;
			cp = c & 0x0F;
		}
		else if ((c & 0xF8) == 0xF0)
		{
			n = 4;
			cp = c & 0x07;
		}
		else
			return WXPAY_TEXT_BAD_UTF8;

		if (i + n > len)
			return WXPAY_TEXT_BAD_UTF8;
		for (int k = 1; k < n; k++)
		{
			unsigned char cc = (unsigned char) s[i + k];

			if ((cc & 0xC0) != 0x80)
				return WXPAY_TEXT_BAD_UTF8;
			cp = (cp << 6) | (cc & 0x3F);
		}
		if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
			(n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
			(cp >= 0xD800 && cp <= 0xDFFF))
			return WXPAY_TEXT_BAD_UTF8;
		if (n == 4)
			four_byte = true;
		i += n;
		nchars++;
	}

	if (four_byte)
		return WXPAY_TEXT_FOUR_BYTE;
	if (nchars > WXPAY_STOP_REASON_MAX)
		return WXPAY_TEXT_TOO_LONG;
	return WXPAY_TEXT_OK;
}

/*
 * RFC 3339 date-time: YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM).
 *
 * Strict on purpose: PostgreSQL's own timestamptz input would also take
 * "now", "epoch" or "tomorrow", which must never come out of an answer.
 * Fractions beyond microseconds are truncated.  A leap second (:60) counts
 * as the first second of the next minute, as PostgreSQL does.
 */
bool
wxpay_parse_rfc3339(const char *s, size_t len, TimestampTz *result)
{
	int			year,
				month,
				day,
				hour,
				minute,
				second;
	int64		usec = 0;
	int64		offset_secs = 0;
	int64		days;
	size_t		pos;

	if (!read_digits(s, len, 0, 4, &year) || len < 20 || s[4] != '-' ||
		!read_digits(s, len, 5, 2, &month) || s[7] != '-' ||
		!read_digits(s, len, 8, 2, &day) ||
		(s[10] != 'T' && s[10] != 't') ||
		!read_digits(s, len, 11, 2, &hour) || s[13] != ':' ||
		!read_digits(s, len, 14, 2, &minute) || s[16] != ':' ||
		!read_digits(s, len, 17, 2, &second))
		return false;

	if (year < 1 || month < 1 || month > 12 || day < 1 || hour > 23 ||
		minute > 59 || second > 60)
		return false;
	{
		int			mdays = (month == 2) ? (is_leap(year) ? 29 : 28) :
			(month == 4 || month == 6 || month == 9 || month == 11) ? 30 : 31;

		if (day > mdays)
			return false;
	}

	pos = 19;
	if (pos < len && s[pos] == '.')
	{
		int			ndigits = 0;

		pos++;
		while (pos < len && s[pos] >= '0' && s[pos] <= '9')
		{
			if (ndigits < 6)
				usec = usec * 10 + (s[pos] - '0');
			ndigits++;
			pos++;
		}
		if (ndigits == 0)
			return false;
		for (int k = ndigits; k < 6; k++)
			usec *= 10;
	}

	if (pos >= len)
		return false;
	if (s[pos] == 'Z' || s[pos] == 'z')
		pos++;
	else if (s[pos] == '+' || s[pos] == '-')
	{
		int			oh,
					om;

		if (!read_digits(s, len, pos + 1, 2, &oh) || pos + 3 >= len ||
			s[pos + 3] != ':' || !read_digits(s, len, pos + 4, 2, &om) ||
			oh > 23 || om > 59)
			return false;
		offset_secs = (int64) oh * 3600 + om * 60;
		if (s[pos] == '-')
			offset_secs = -offset_secs;
		pos += 6;
	}
	else
		return false;
	if (pos != len)
		return false;

	/* days from 2000-01-01, PostgreSQL's epoch */
	days = (int64) 365 * (year - 2000) + leaps_before(year) - leaps_before(2000) +
		days_before_month[month - 1] + (month > 2 && is_leap(year) ? 1 : 0) +
		(day - 1);

	*result = days * USECS_PER_DAY +
		((int64) hour * 3600 + minute * 60 + second - offset_secs) * USECS_PER_SEC +
		usec;
	return true;
}

size_t
wxpay_base64_encoded_len(size_t srclen)
{
	return ((srclen + 2) / 3) * 4;
}

/*
 * Standard alphabet with padding, no line breaks.  dst must hold
 * wxpay_base64_encoded_len(len) + 1 bytes; the result is NUL-terminated.
 */
size_t
wxpay_base64_encode(const unsigned char *src, size_t len, char *dst)
{
	size_t		o = 0;
	size_t		i;

	for (i = 0; i + 2 < len; i += 3)
	{
		uint32		v = ((uint32) src[i] << 16) | ((uint32) src[i + 1] << 8) | src[i + 2];

		dst[o++] = b64_alphabet[(v >> 18) & 63];
		dst[o++] = b64_alphabet[(v >> 12) & 63];
		dst[o++] = b64_alphabet[(v >> 6) & 63];
		dst[o++] = b64_alphabet[v & 63];
	}
	if (i < len)
	{
		uint32		v = (uint32) src[i] << 16;

		if (i + 1 < len)
			v |= (uint32) src[i + 1] << 8;
		dst[o++] = b64_alphabet[(v >> 18) & 63];
		dst[o++] = b64_alphabet[(v >> 12) & 63];
		dst[o++] = (i + 1 < len) ? b64_alphabet[(v >> 6) & 63] : '=';
		dst[o++] = '=';
	}
	dst[o] = '\0';
	return o;
}

static int
b64_value(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/*
 * Strict decoding: length a multiple of 4, padding only at the end, no
 * whitespace, zero bits under the padding (so that each value has exactly
 * one accepted spelling).  Returns false for anything else, or when dst is
 * too small.
 */
bool
wxpay_base64_decode(const char *src, size_t len, unsigned char *dst,
					size_t dstcap, size_t *dstlen)
{
	size_t		o = 0;

	if (len == 0 || len % 4 != 0)
		return false;

	for (size_t i = 0; i < len; i += 4)
	{
		int			v[4];
		int			pad = 0;
		uint32		bits;

		for (int k = 0; k < 4; k++)
		{
			unsigned char c = (unsigned char) src[i + k];

			if (c == '=' && i + 4 == len && k >= 2)
			{
				/* padding: only in the last quantum, and only trailing */
				if (k == 2 && src[i + 3] != '=')
					return false;
				v[k] = 0;
				pad++;
				continue;
			}
			v[k] = b64_value(c);
			if (v[k] < 0 || pad > 0)
				return false;
		}
		bits = ((uint32) v[0] << 18) | ((uint32) v[1] << 12) |
			((uint32) v[2] << 6) | (uint32) v[3];
		/* the bits under the padding must be zero: one spelling per value */
		if ((pad == 1 && (bits & 0xFF) != 0) ||
			(pad == 2 && (bits & 0xFFFF) != 0))
			return false;
		if (o + 3 - pad > dstcap)
			return false;
		dst[o++] = (bits >> 16) & 0xFF;
		if (pad < 2)
			dst[o++] = (bits >> 8) & 0xFF;
		if (pad < 1)
			dst[o++] = bits & 0xFF;
	}
	*dstlen = o;
	return true;
}

/*
 * Split "Name: value\r\n" into trimmed name and value.  False for lines
 * without a colon (status lines, the blank end of the headers) and for
 * names that are empty or contain white space.
 */
bool
wxpay_parse_header_line(const char *line, size_t len,
						const char **name, size_t *namelen,
						const char **value, size_t *valuelen)
{
	size_t		colon;
	size_t		vstart;
	size_t		vend;

	for (colon = 0; colon < len && line[colon] != ':'; colon++)
	{
		if (line[colon] == ' ' || line[colon] == '\t' ||
			line[colon] == '\r' || line[colon] == '\n')
			return false;
	}
	if (colon == 0 || colon >= len)
		return false;

	vstart = colon + 1;
	while (vstart < len && (line[vstart] == ' ' || line[vstart] == '\t'))
		vstart++;
	vend = len;
	while (vend > vstart && (line[vend - 1] == '\r' || line[vend - 1] == '\n' ||
							 line[vend - 1] == ' ' || line[vend - 1] == '\t'))
		vend--;

	*name = line;
	*namelen = colon;
	*value = line + vstart;
	*valuelen = vend - vstart;
	return true;
}

/*
 * The index of the header name among names[0..n-1], compared without regard
 * to case (as HTTP requires), or -1.
 */
static int
HeaderIndex(const char *const *names, int n, const char *name, size_t len)
{
	for (int i = 0; i < n; i++)
	{
		const char *h = names[i];
		size_t		k;

		if (strlen(h) != len)
			continue;
		for (k = 0; k < len; k++)
		{
			unsigned char a = (unsigned char) name[k];
			unsigned char b = (unsigned char) h[k];

			if (a >= 'A' && a <= 'Z')
				a += 'a' - 'A';
			if (b >= 'A' && b <= 'Z')
				b += 'a' - 'A';
			if (a != b)
				break;
		}
		if (k == len)
			return i;
	}
	return -1;
}

/*
 * Which of the answer headers that verification needs the header name is
 * (compared without regard to case, as HTTP requires), or -1.
 */
int
wxpay_answer_header(const char *name, size_t len)
{
	static const char *const names[WXPAY_NUM_ANSWER_HEADERS] = {
		[WXPAY_H_TIMESTAMP] = "Wechatpay-Timestamp",
		[WXPAY_H_NONCE] = "Wechatpay-Nonce",
		[WXPAY_H_SIGNATURE] = "Wechatpay-Signature",
		[WXPAY_H_SERIAL] = "Wechatpay-Serial",
		[WXPAY_H_REQUEST_ID] = "Request-ID",
	};

	return HeaderIndex(names, WXPAY_NUM_ANSWER_HEADERS, name, len);
}

/*
 * Record one arrival of a header.  Every arrival counts, so that a
 * duplicate is seen; the value kept is the last one.  A value that does not
 * fit, or holds a NUL byte (which would make the C string differ from what
 * came), is marked unusable instead of being cut.
 */
void
wxpay_store_header(WxpayHeaderValue *h, const char *v, size_t len)
{
	h->count++;
	if (len >= sizeof(h->value) || memchr(v, '\0', len) != NULL)
	{
		h->overlong = true;
		return;
	}
	memcpy(h->value, v, len);
	h->value[len] = '\0';
	h->len = len;
}

/* Unix seconds: 1 to 12 decimal digits, nothing else. */
bool
wxpay_parse_unix_seconds(const char *s, size_t len, int64 *result)
{
	int64		v = 0;

	if (len == 0 || len > 12)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if (s[i] < '0' || s[i] > '9')
			return false;
		v = v * 10 + (s[i] - '0');
	}
	*result = v;
	return true;
}

bool
wxpay_is_hex(const char *s, size_t len)
{
	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
			  (c >= 'A' && c <= 'F')))
			return false;
	}
	return true;
}

/* A merchant number: 1 to WXPAY_MCHID_MAX digits. */
bool
wxpay_check_mchid(const char *s)
{
	size_t		len = strlen(s);

	return len > 0 && len <= WXPAY_MCHID_MAX && strspn(s, "0123456789") == len;
}

/* A certificate serial number: 1 to WXPAY_SERIAL_MAX hexadecimal digits. */
bool
wxpay_check_serial(const char *s)
{
	size_t		len = strlen(s);

	return len > 0 && len <= WXPAY_SERIAL_MAX && wxpay_is_hex(s, len);
}

/* A WeChat Pay public key ID: "PUB_KEY_ID_" and digits, at most WXPAY_SERIAL_MAX. */
bool
wxpay_check_pubkey_id(const char *s)
{
	size_t		len = strlen(s);

	return len > 11 && len <= WXPAY_SERIAL_MAX &&
		strncmp(s, "PUB_KEY_ID_", 11) == 0 &&
		strspn(s + 11, "0123456789") == len - 11;
}

/* ----------------------------------------------------------------
 *		Notification headers
 *
 * A notification reaches SQL as a JSON object of headers that the
 * caller's web framework collected: any letter case, possibly the same
 * header twice under two cases.  The checks here are the ones that need
 * no key and no clock; call.c's notify.c does the rest.
 * ----------------------------------------------------------------
 */

static const char *const notify_header_names[WXPAY_NUM_NOTIFY_HEADERS] = {
	[WXPAY_NH_TIMESTAMP] = "Wechatpay-Timestamp",
	[WXPAY_NH_NONCE] = "Wechatpay-Nonce",
	[WXPAY_NH_SIGNATURE] = "Wechatpay-Signature",
	[WXPAY_NH_SERIAL] = "Wechatpay-Serial",
	[WXPAY_NH_SIGNATURE_TYPE] = "Wechatpay-Signature-Type",
};

/* Which notification header the name is, whatever its case, or -1. */
int
wxpay_notify_header(const char *name, size_t len)
{
	return HeaderIndex(notify_header_names, WXPAY_NUM_NOTIFY_HEADERS, name, len);
}

/* The header's name as documented, for messages. */
const char *
wxpay_notify_header_name(int which)
{
	if (which < 0 || which >= WXPAY_NUM_NOTIFY_HEADERS)
		return "?";
	return notify_header_names[which];
}

/*
 * Judge the headers stored in nh->h (wxpay_store_header()): each required
 * one exactly once and text, the timestamp Unix seconds, the nonce
 * printable ASCII, the signature type (when given) APIv3's, the signature
 * no probe and strict Base64 of at most WXPAY_SIGNATURE_MAX bytes, the
 * serial a certificate serial or a public key ID.  On failure nh->failed
 * names the header.
 */
WxpayNotifyCheck
wxpay_notify_check_headers(WxpayNotifyHeaders *nh)
{
	nh->failed = -1;
	nh->timestamp = 0;
	nh->signature_len = 0;

	for (int i = 0; i < WXPAY_NUM_NOTIFY_HEADERS; i++)
	{
		WxpayHeaderValue *h = &nh->h[i];

		nh->failed = i;
		if (h->count == 0)
		{
			if (i == WXPAY_NH_SIGNATURE_TYPE)
				continue;		/* optional */
			return WXPAY_NOTIFY_MISSING;
		}
		if (h->count > 1)
			return WXPAY_NOTIFY_DUPLICATE;
		if (h->overlong || strlen(h->value) != h->len)
			return WXPAY_NOTIFY_NOT_TEXT;
	}

	nh->failed = WXPAY_NH_TIMESTAMP;
	if (!wxpay_parse_unix_seconds(nh->h[WXPAY_NH_TIMESTAMP].value,
								  nh->h[WXPAY_NH_TIMESTAMP].len, &nh->timestamp))
		return WXPAY_NOTIFY_BAD_TIMESTAMP;

	nh->failed = WXPAY_NH_NONCE;
	if (nh->h[WXPAY_NH_NONCE].len == 0)
		return WXPAY_NOTIFY_BAD_NONCE;
	for (size_t k = 0; k < nh->h[WXPAY_NH_NONCE].len; k++)
	{
		unsigned char c = (unsigned char) nh->h[WXPAY_NH_NONCE].value[k];

		if (c < 0x21 || c > 0x7e)
			return WXPAY_NOTIFY_BAD_NONCE;
	}

	nh->failed = WXPAY_NH_SIGNATURE_TYPE;
	if (nh->h[WXPAY_NH_SIGNATURE_TYPE].count == 1 &&
		strcmp(nh->h[WXPAY_NH_SIGNATURE_TYPE].value, WXPAY_SIGNATURE_TYPE) != 0)
		return WXPAY_NOTIFY_BAD_TYPE;

	nh->failed = WXPAY_NH_SIGNATURE;
	if (nh->h[WXPAY_NH_SIGNATURE].len >= strlen(WXPAY_PROBE_PREFIX) &&
		strncmp(nh->h[WXPAY_NH_SIGNATURE].value, WXPAY_PROBE_PREFIX,
				strlen(WXPAY_PROBE_PREFIX)) == 0)
		return WXPAY_NOTIFY_PROBE;
	if (!wxpay_base64_decode(nh->h[WXPAY_NH_SIGNATURE].value,
							 nh->h[WXPAY_NH_SIGNATURE].len,
							 nh->signature, sizeof(nh->signature),
							 &nh->signature_len) ||
		nh->signature_len == 0)
	{
		nh->signature_len = 0;
		return WXPAY_NOTIFY_BAD_SIGNATURE;
	}

	nh->failed = WXPAY_NH_SERIAL;
	if (!wxpay_check_serial(nh->h[WXPAY_NH_SERIAL].value) &&
		!wxpay_check_pubkey_id(nh->h[WXPAY_NH_SERIAL].value))
		return WXPAY_NOTIFY_BAD_SERIAL;

	nh->failed = -1;
	return WXPAY_NOTIFY_OK;
}

/*
 * Surrounding white space (space, tab, CR, LF) off s, as a key read with
 * pg_read_file keeps its final newline: returns the first byte kept and its
 * length in *len (s itself is not changed).
 */
char *
wxpay_trim_space(char *s, size_t *len)
{
	size_t		n = strlen(s);

	while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t' ||
					 s[n - 1] == '\r' || s[n - 1] == '\n'))
		n--;
	while (n > 0 && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
	{
		s++;
		n--;
	}
	*len = n;
	return s;
}
