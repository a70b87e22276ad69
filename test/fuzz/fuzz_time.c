/*-------------------------------------------------------------------------
 *
 * fuzz_time.c
 *	  Fuzz target: RFC 3339 timestamps of answer bodies and the Unix
 *	  seconds of the Wechatpay-Timestamp header (protocol.c).
 *
 * Properties: an accepted RFC 3339 time, written back as UTC by an
 * independent civil-calendar conversion (days from the epoch to a date by
 * the era algorithm, not the parser's leap-year counting), parses to the
 * same instant; accepted Unix seconds are exactly the decimal value of
 * 1 to 12 digits.
 *
 *-------------------------------------------------------------------------
 */
#include "fuzz_common.h"

#include <string.h>

/* days since 1970-01-01 to a proleptic Gregorian date */
static void
CivilFromDays(int64 z, int64 *y, int *m, int *d)
{
	int64		era,
				doe,
				yoe,
				doy,
				mp;

	z += 719468;
	era = (z >= 0 ? z : z - 146096) / 146097;
	doe = z - era * 146097;
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	*d = (int) (doy - (153 * mp + 2) / 5 + 1);
	*m = (int) (mp < 10 ? mp + 3 : mp - 9);
	*y = yoe + era * 400 + (*m <= 2);
}

static void
CheckRfc3339(const char *s, size_t size)
{
	TimestampTz t;
	TimestampTz again;
	int64		secs,
				usec,
				days,
				sod,
				y;
	int			m,
				d;
	char		buf[64];
	int			n;

	if (!wxpay_parse_rfc3339(s, size, &t))
		return;
	FUZZ_CHECK(size >= 20);

	/* floor division into days (PostgreSQL epoch 2000-01-01) and seconds */
	secs = t / USECS_PER_SEC;
	usec = t % USECS_PER_SEC;
	if (usec < 0)
	{
		usec += USECS_PER_SEC;
		secs--;
	}
	days = secs / 86400;
	sod = secs % 86400;
	if (sod < 0)
	{
		sod += 86400;
		days--;
	}
	CivilFromDays(days + 10957, &y, &m, &d);
	if (y < 1 || y > 9999)
		return;					/* an offset moved it out of 4-digit years */
	n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ",
				 (int) y, m, d, (int) (sod / 3600), (int) (sod / 60 % 60),
				 (int) (sod % 60), (int) usec);
	FUZZ_CHECK(n > 0 && (size_t) n < sizeof(buf));
	FUZZ_CHECK(wxpay_parse_rfc3339(buf, n, &again));
	FUZZ_CHECK(again == t);
}

static void
CheckUnixSeconds(const char *s, size_t size)
{
	int64		v;
	int64		naive = 0;

	if (!wxpay_parse_unix_seconds(s, size, &v))
		return;
	FUZZ_CHECK(size >= 1 && size <= 12);
	for (size_t i = 0; i < size; i++)
	{
		FUZZ_CHECK(s[i] >= '0' && s[i] <= '9');
		naive = naive * 10 + (s[i] - '0');
	}
	FUZZ_CHECK(v == naive && v >= 0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	CheckRfc3339((const char *) data, size);
	CheckUnixSeconds((const char *) data, size);
	return 0;
}
