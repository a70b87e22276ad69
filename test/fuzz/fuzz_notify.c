/*-------------------------------------------------------------------------
 *
 * fuzz_notify.c
 *	  Fuzz target: a notification's headers, as the SQL entry point hands
 *	  them to protocol.c (call/notify.c collects them from a jsonb object
 *	  the same way), then wxpay_notify_check_headers().
 *
 * Input: lines "Name: value"; a line "-" starts a second round with the
 * same input, so that the checker runs twice on the same headers and must
 * agree with itself.  Properties: names match whatever their case and only
 * the five notification headers are kept; a verdict of OK means each
 * required header came exactly once as text, the timestamp is Unix
 * seconds, the nonce printable ASCII, the signature no probe and strict
 * Base64 of 1 to WXPAY_SIGNATURE_MAX bytes, the serial a certificate serial
 * or a public key ID, the signature type absent or APIv3's; any other
 * verdict names the header that failed.
 *
 *-------------------------------------------------------------------------
 */
#include "fuzz_common.h"

#include <string.h>

static WxpayNotifyCheck
Judge(const uint8_t *data, size_t size, WxpayNotifyHeaders *nh)
{
	const char *p = (const char *) data;
	const char *end = p + size;

	memset(nh, 0, sizeof(*nh));
	while (p < end)
	{
		const char *nl = memchr(p, '\n', end - p);
		size_t		len = nl ? (size_t) (nl - p) + 1 : (size_t) (end - p);
		char	   *line = malloc(len ? len : 1);
		const char *name,
				   *value;
		size_t		namelen,
					valuelen;

		memcpy(line, p, len);
		if (wxpay_parse_header_line(line, len, &name, &namelen, &value, &valuelen))
		{
			int			which = wxpay_notify_header(name, namelen);

			FUZZ_CHECK(which >= -1 && which < WXPAY_NUM_NOTIFY_HEADERS);
			if (which >= 0)
			{
				FUZZ_CHECK(namelen == strlen(wxpay_notify_header_name(which)));
				wxpay_store_header(&nh->h[which], value, valuelen);
			}
		}
		free(line);
		p += len;
	}
	return wxpay_notify_check_headers(nh);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	WxpayNotifyHeaders nh;
	WxpayNotifyHeaders again;
	WxpayNotifyCheck check = Judge(data, size, &nh);

	FUZZ_CHECK(check == Judge(data, size, &again));
	if (check != WXPAY_NOTIFY_OK)
	{
		FUZZ_CHECK(nh.failed >= 0 && nh.failed < WXPAY_NUM_NOTIFY_HEADERS);
		return 0;
	}

	FUZZ_CHECK(nh.failed == -1);
	for (int i = 0; i < WXPAY_NUM_NOTIFY_HEADERS; i++)
	{
		if (i == WXPAY_NH_SIGNATURE_TYPE && nh.h[i].count == 0)
			continue;
		FUZZ_CHECK(nh.h[i].count == 1 && !nh.h[i].overlong);
		FUZZ_CHECK(strlen(nh.h[i].value) == nh.h[i].len);
	}
	FUZZ_CHECK(nh.timestamp >= 0 && nh.timestamp < INT64CONST(1000000000000));
	FUZZ_CHECK(nh.h[WXPAY_NH_NONCE].len > 0);
	for (size_t k = 0; k < nh.h[WXPAY_NH_NONCE].len; k++)
		FUZZ_CHECK(nh.h[WXPAY_NH_NONCE].value[k] > ' ' &&
				   nh.h[WXPAY_NH_NONCE].value[k] < 0x7f);
	FUZZ_CHECK(strncmp(nh.h[WXPAY_NH_SIGNATURE].value, WXPAY_PROBE_PREFIX,
					   strlen(WXPAY_PROBE_PREFIX)) != 0);
	FUZZ_CHECK(nh.signature_len > 0 && nh.signature_len <= WXPAY_SIGNATURE_MAX);
	FUZZ_CHECK(wxpay_check_serial(nh.h[WXPAY_NH_SERIAL].value) ||
			   wxpay_check_pubkey_id(nh.h[WXPAY_NH_SERIAL].value));
	if (nh.h[WXPAY_NH_SIGNATURE_TYPE].count == 1)
		FUZZ_CHECK(strcmp(nh.h[WXPAY_NH_SIGNATURE_TYPE].value, WXPAY_SIGNATURE_TYPE) == 0);
	return 0;
}
