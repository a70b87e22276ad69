/*-------------------------------------------------------------------------
 *
 * fuzz_input.c
 *	  Fuzz target: the input rules (plan numbers, stop reasons, hex
 *	  serials) of protocol.c.
 *
 * Each accepted input is checked against a second, deliberately naive
 * statement of the rule: plan numbers and hex by character class; stop
 * reasons by decoding the UTF-8 with a separate decoder and counting.
 *
 *-------------------------------------------------------------------------
 */
#include "fuzz_common.h"

#include <string.h>

/* code points of s, or -1 when not strict UTF-8; *four set on 4-byte forms */
static long
NaiveUtf8Count(const unsigned char *s, size_t len, bool *four)
{
	long		n = 0;
	size_t		i = 0;

	*four = false;
	while (i < len)
	{
		unsigned int cp;
		size_t		k;

		if (s[i] < 0x80)
			cp = s[i], k = 1;
		else if (s[i] >= 0xC2 && s[i] <= 0xDF)
			cp = s[i] & 0x1F, k = 2;
		else if (s[i] >= 0xE0 && s[i] <= 0xEF)
			cp = s[i] & 0x0F, k = 3;
		else if (s[i] >= 0xF0 && s[i] <= 0xF4)
			cp = s[i] & 0x07, k = 4;
		else
			return -1;
		if (i + k > len)
			return -1;
		for (size_t j = 1; j < k; j++)
		{
			if ((s[i + j] & 0xC0) != 0x80)
				return -1;
			cp = (cp << 6) | (s[i + j] & 0x3F);
		}
		if ((k == 3 && cp < 0x800) || (k == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
			(cp >= 0xD800 && cp <= 0xDFFF))
			return -1;
		if (k == 4)
			*four = true;
		i += k;
		n++;
	}
	return n;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *) data;
	WxpayTextCheck r;
	bool		four;
	long		nchars;
	bool		naive;

	/* plan numbers */
	naive = size >= 1 && size <= WXPAY_PLAN_NO_MAX;
	for (size_t i = 0; naive && i < size; i++)
		naive = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'z') ||
			(s[i] >= 'A' && s[i] <= 'Z') || s[i] == '_' || s[i] == '-' || s[i] == '*';
	FUZZ_CHECK((wxpay_check_plan_no(s, size) == WXPAY_TEXT_OK) == naive);

	/* sub-merchant numbers (partner mode): ASCII digits only */
	naive = size >= 1 && size <= WXPAY_SUB_MCHID_MAX;
	for (size_t i = 0; naive && i < size; i++)
		naive = s[i] >= '0' && s[i] <= '9';
	FUZZ_CHECK((wxpay_check_sub_mchid(s, size) == WXPAY_TEXT_OK) == naive);

	/* hex serials */
	naive = size >= 1;
	for (size_t i = 0; naive && i < size; i++)
		naive = (s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
			(s[i] >= 'A' && s[i] <= 'F');
	FUZZ_CHECK(wxpay_is_hex(s, size) == naive);

	/* stop reasons */
	r = wxpay_check_stop_reason(s, size);
	nchars = NaiveUtf8Count(data, size, &four);
	if (size == 0)
		FUZZ_CHECK(r == WXPAY_TEXT_EMPTY);
	else if (memchr(s, '\0', size) != NULL)
		FUZZ_CHECK(r == WXPAY_TEXT_CONTROL || r == WXPAY_TEXT_BAD_UTF8);
	else if (nchars < 0)
		FUZZ_CHECK(r == WXPAY_TEXT_BAD_UTF8);
	else if (four)
		FUZZ_CHECK(r == WXPAY_TEXT_FOUR_BYTE);
	else if (nchars > WXPAY_STOP_REASON_MAX)
		FUZZ_CHECK(r == WXPAY_TEXT_TOO_LONG);
	else
		FUZZ_CHECK(r == WXPAY_TEXT_OK);
	return 0;
}
