/*-------------------------------------------------------------------------
 *
 * fuzz_headers.c
 *	  Fuzz target: an answer's header block as libcurl hands it over, line
 *	  by line, through the same protocol.c functions the transport uses,
 *	  then the pure checks verification makes on the signature headers.
 *
 * Properties: a parsed name and value lie inside their line, the name is
 * non-empty without white space, the value is trimmed; only the five
 * headers verification needs are kept, whatever their case; a kept value
 * is a C string of exactly its recorded length (never cut at a NUL) and
 * fits its buffer; a status line starts the headers afresh.  Then the
 * kept timestamp, signature and serial go through the same decoding as
 * in api.c and sign.c, so their edge cases are fuzzed with real layouts.
 *
 *-------------------------------------------------------------------------
 */
#include "fuzz_common.h"

#include <string.h>

static void
CheckKept(const WxpayHeaderValue *h)
{
	FUZZ_CHECK(h->count >= 0);
	if (h->count == 0)
		FUZZ_CHECK(h->len == 0 && !h->overlong);
	if (h->count > 0 && !h->overlong)
	{
		FUZZ_CHECK(h->len < sizeof(h->value));
		FUZZ_CHECK(strlen(h->value) == h->len);
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	WxpayHeaderValue hv[WXPAY_NUM_ANSWER_HEADERS];
	const char *p = (const char *) data;
	const char *end = p + size;

	memset(hv, 0, sizeof(hv));
	while (p < end)
	{
		const char *nl = memchr(p, '\n', end - p);
		size_t		len = nl ? (size_t) (nl - p) + 1 : (size_t) (end - p);
		/* libcurl hands each line over in its own buffer */
		char	   *line = malloc(len ? len : 1);
		const char *name,
				   *value;
		size_t		namelen,
					valuelen;

		memcpy(line, p, len);
		if (len >= 5 && strncmp(line, "HTTP/", 5) == 0)
			memset(hv, 0, sizeof(hv));
		else if (wxpay_parse_header_line(line, len, &name, &namelen, &value, &valuelen))
		{
			int			which;

			FUZZ_CHECK(name == line && namelen > 0 && namelen < len);
			FUZZ_CHECK(memchr(name, ':', namelen) == NULL);
			for (size_t i = 0; i < namelen; i++)
				FUZZ_CHECK(name[i] != ' ' && name[i] != '\t' &&
						   name[i] != '\r' && name[i] != '\n');
			FUZZ_CHECK(value >= line + namelen + 1 && value + valuelen <= line + len);
			if (valuelen > 0)
			{
				FUZZ_CHECK(value[0] != ' ' && value[0] != '\t');
				FUZZ_CHECK(value[valuelen - 1] != ' ' && value[valuelen - 1] != '\t' &&
						   value[valuelen - 1] != '\r' && value[valuelen - 1] != '\n');
			}
			which = wxpay_answer_header(name, namelen);
			FUZZ_CHECK(which >= -1 && which < WXPAY_NUM_ANSWER_HEADERS);
			if (which >= 0)
			{
				int			before = hv[which].count;

				wxpay_store_header(&hv[which], value, valuelen);
				FUZZ_CHECK(hv[which].count == before + 1);
				if (!hv[which].overlong)
					FUZZ_CHECK(hv[which].len == valuelen &&
							   memcmp(hv[which].value, value, valuelen) == 0);
			}
		}
		free(line);
		p += len;
	}

	for (int i = 0; i < WXPAY_NUM_ANSWER_HEADERS; i++)
		CheckKept(&hv[i]);

	/* what verification does with usable values, short of the RSA check */
	if (hv[WXPAY_H_TIMESTAMP].count == 1 && !hv[WXPAY_H_TIMESTAMP].overlong)
	{
		int64		ts;

		if (wxpay_parse_unix_seconds(hv[WXPAY_H_TIMESTAMP].value,
									 hv[WXPAY_H_TIMESTAMP].len, &ts))
			FUZZ_CHECK(ts >= 0 && ts < INT64CONST(1000000000000));
	}
	if (hv[WXPAY_H_SIGNATURE].count == 1 && !hv[WXPAY_H_SIGNATURE].overlong)
	{
		unsigned char sig[1024];
		size_t		siglen;

		if (wxpay_base64_decode(hv[WXPAY_H_SIGNATURE].value,
								hv[WXPAY_H_SIGNATURE].len, sig, sizeof(sig), &siglen))
			FUZZ_CHECK(siglen <= sizeof(sig));
	}
	if (hv[WXPAY_H_SERIAL].count == 1 && !hv[WXPAY_H_SERIAL].overlong)
		(void) wxpay_is_hex(hv[WXPAY_H_SERIAL].value, hv[WXPAY_H_SERIAL].len);
	return 0;
}
