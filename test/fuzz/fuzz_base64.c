/*-------------------------------------------------------------------------
 *
 * fuzz_base64.c
 *	  Fuzz target: Base64 as used for signatures (protocol.c).
 *
 * Properties: decoding never writes past the buffer it is given; whatever
 * decodes re-encodes to exactly the input (strict decoding accepts one
 * spelling per value, so a signature header cannot be varied without
 * being refused); encoding any bytes gives the announced length and
 * decodes back to them.
 *
 *-------------------------------------------------------------------------
 */
#include "fuzz_common.h"

#include <string.h>

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *s = (const char *) data;
	size_t		cap = size;		/* decoding never needs more */
	unsigned char *dec = malloc(cap + 1);
	char	   *enc;
	size_t		declen = 0;

	/* the input as Base64 text */
	if (wxpay_base64_decode(s, size, dec, cap, &declen))
	{
		FUZZ_CHECK(size > 0 && size % 4 == 0);
		FUZZ_CHECK(declen <= cap && declen >= size / 4 * 3 - 2);
		enc = malloc(wxpay_base64_encoded_len(declen) + 1);
		FUZZ_CHECK(wxpay_base64_encode(dec, declen, enc) == size);
		FUZZ_CHECK(memcmp(enc, s, size) == 0);
		free(enc);

		/* one byte short of room must be refused, not overrun */
		if (declen > 0)
		{
			unsigned char *small = malloc(declen - 1 + 1);
			size_t		n;

			FUZZ_CHECK(!wxpay_base64_decode(s, size, small, declen - 1, &n));
			free(small);
		}
	}

	/* the input as bytes */
	enc = malloc(wxpay_base64_encoded_len(size) + 1);
	FUZZ_CHECK(wxpay_base64_encode(data, size, enc) == wxpay_base64_encoded_len(size));
	if (size > 0)
	{
		unsigned char *back = malloc(size);
		size_t		n = 0;

		FUZZ_CHECK(wxpay_base64_decode(enc, wxpay_base64_encoded_len(size), back, size, &n));
		FUZZ_CHECK(n == size && memcmp(back, data, size) == 0);
		free(back);
	}
	free(enc);
	free(dec);
	return 0;
}
