/*-------------------------------------------------------------------------
 *
 * encoding.c
 *	  Text from WeChat Pay (UTF-8) into the database encoding.
 *
 * WeChat Pay sends UTF-8: bodies, header values, its error messages.  The
 * database may use another encoding, so everything that comes from an
 * answer passes through wxpay_from_utf8() before it becomes a SQL value or
 * part of a message.  The conversion never raises: a stop that happened
 * must read as a stop, and a rejected request must keep its SQLSTATE, even
 * when WeChat Pay's text holds a character the database cannot store.  So
 *
 *	  - a character the database encoding lacks becomes "\uXXXX" (or
 *		"\UXXXXXXXX" above U+FFFF), its Unicode code point in hexadecimal;
 *	  - a byte that is not part of valid UTF-8 becomes "\xHH";
 *	  - in SQL_ASCII databases the bytes pass unchanged, as PostgreSQL
 *		itself does there (only invalid UTF-8 is escaped).
 *
 * For a JSON body (json = true) the replacements are themselves JSON
 * escaped ("\\u6708"), so that after parsing the string holds the same
 * "\u6708" as any other field would.  JSON's own "\uXXXX" escapes of
 * non-ASCII characters are first turned into the characters they stand
 * for, so that jsonb_in() never has to translate one (it would raise for a
 * character the database lacks).
 *
 * The conversion function is looked up once per process, in a transaction
 * (wxpay_encoding_prepare(), called whenever a request is signed), and
 * then called directly through its FmgrInfo: the background worker judges
 * its answers with no transaction open.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "wxpay_signplan.h"

/* local state: the conversion UTF-8 -> database encoding */
static bool EncodingReady = false;
static int	EncodingTarget = -1;	/* database encoding */
static bool EncodingConvert = false;	/* false: UTF8 or SQL_ASCII */
static FmgrInfo EncodingProc;

static void EncodingEscape(StringInfo out, const unsigned char *c,
						   bool valid, bool json);
static unsigned int EncodingHex4(const char *s);
static char *EncodingUnescapeJson(const char *s, size_t len, size_t *outlen);

/*
 * Look up the conversion for this database, once.  Needs a transaction the
 * first time; later calls do nothing.
 */
void
wxpay_encoding_prepare(void)
{
	Oid			proc;

	if (EncodingReady)
		return;
	EncodingTarget = GetDatabaseEncoding();
	if (EncodingTarget == PG_UTF8 || EncodingTarget == PG_SQL_ASCII)
	{
		EncodingConvert = false;
		EncodingReady = true;
		return;
	}
	if (!IsTransactionState())
		elog(ERROR, "wxpay_encoding_prepare called outside a transaction");
	proc = FindDefaultConversionProc(PG_UTF8, EncodingTarget);
	if (!OidIsValid(proc))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("default conversion function for encoding \"%s\" to \"%s\" does not exist",
						pg_encoding_to_char(PG_UTF8),
						pg_encoding_to_char(EncodingTarget))));
	fmgr_info_cxt(proc, &EncodingProc, TopMemoryContext);
	EncodingConvert = true;
	EncodingReady = true;
}

/* A replacement for one character (valid) or one byte (not valid UTF-8). */
static void
EncodingEscape(StringInfo out, const unsigned char *c, bool valid, bool json)
{
	const char *bs = json ? "\\\\" : "\\";

	if (!valid)
		appendStringInfo(out, "%sx%02X", bs, c[0]);
	else
	{
		pg_wchar	cp = utf8_to_unicode(c);

		if (cp > 0xFFFF)
			appendStringInfo(out, "%sU%08X", bs, (unsigned int) cp);
		else
			appendStringInfo(out, "%su%04X", bs, (unsigned int) cp);
	}
}

/* Four hexadecimal digits (checked by the caller) as a number. */
static unsigned int
EncodingHex4(const char *s)
{
	char		buf[5];

	memcpy(buf, s, 4);
	buf[4] = '\0';
	return (unsigned int) strtoul(buf, NULL, 16);
}

/*
 * JSON's \uXXXX escapes of non-ASCII characters (surrogate pairs too) as the
 * UTF-8 characters they stand for; everything else unchanged.  Lone or
 * invalid surrogates stay escaped (jsonb_in judges them).
 */
static char *
EncodingUnescapeJson(const char *s, size_t len, size_t *outlen)
{
	StringInfoData out;
	bool		in_string = false;
	size_t		i = 0;

	initStringInfo(&out);
	while (i < len)
	{
		char		c = s[i];

		if (!in_string)
		{
			if (c == '"')
				in_string = true;
			appendStringInfoChar(&out, c);
			i++;
			continue;
		}
		if (c == '"')
		{
			in_string = false;
			appendStringInfoChar(&out, c);
			i++;
			continue;
		}
		if (c != '\\' || i + 1 >= len)
		{
			appendStringInfoChar(&out, c);
			i++;
			continue;
		}
		if (s[i + 1] == 'u' && i + 6 <= len && wxpay_is_hex(s + i + 2, 4))
		{
			unsigned int cp = EncodingHex4(s + i + 2);
			size_t		used = 6;

			if (cp >= 0xD800 && cp <= 0xDBFF)
			{
				unsigned int lo = 0;

				if (i + 12 <= len && s[i + 6] == '\\' && s[i + 7] == 'u' &&
					wxpay_is_hex(s + i + 8, 4))
					lo = EncodingHex4(s + i + 8);
				if (lo >= 0xDC00 && lo <= 0xDFFF)
				{
					cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
					used = 12;
				}
				else
					cp = 0;		/* lone high surrogate: leave it */
			}
			else if (cp >= 0xDC00 && cp <= 0xDFFF)
				cp = 0;			/* lone low surrogate: leave it */

			if (cp >= 0x80)
			{
				unsigned char buf[8];

				unicode_to_utf8((pg_wchar) cp, buf);
				appendBinaryStringInfo(&out, (char *) buf, pg_utf_mblen(buf));
				i += used;
				continue;
			}
		}
		/* any other escape: copied as it is, both characters */
		appendBinaryStringInfo(&out, s + i, 2);
		i += 2;
	}
	*outlen = out.len;
	return out.data;
}

/*
 * s (len bytes of what WeChat Pay sent, meant to be UTF-8) in the database
 * encoding, palloc'd and NUL-terminated, with the replacements described in
 * the header comment.  json: s is a JSON text (replacements JSON-escaped,
 * \u escapes of non-ASCII characters resolved first).  *outlen may be NULL.
 * Never raises for the text's content; a NUL byte in s ends it.
 */
char *
wxpay_from_utf8(const char *s, size_t len, bool json, size_t *outlen)
{
	StringInfoData out;
	const unsigned char *p;
	const unsigned char *end;
	char	   *unescaped = NULL;
	unsigned char *conv = NULL;

	if (s == NULL)
		return NULL;
	if (!EncodingReady)
		wxpay_encoding_prepare();
	if (memchr(s, '\0', len) != NULL)
		len = strlen(s);
	if (json && GetDatabaseEncoding() != PG_UTF8)
		s = unescaped = EncodingUnescapeJson(s, len, &len);

	initStringInfo(&out);
	p = (const unsigned char *) s;
	end = p + len;
	while (p < end)
	{
		const unsigned char *run = p;
		int			runlen;

		/* the longest valid UTF-8 run from p */
		while (p < end)
		{
			int			l;

			if (*p < 0x80)
			{
				p++;
				continue;
			}
			l = pg_utf_mblen(p);
			if (p + l > end || !pg_utf8_islegal(p, l))
				break;
			p += l;
		}
		runlen = p - run;

		/* convert it, escaping what the database lacks */
		while (runlen > 0)
		{
			int			done;
			int			l;

			if (!EncodingConvert)
			{
				appendBinaryStringInfo(&out, (const char *) run, runlen);
				break;
			}
			if (conv == NULL)
				conv = palloc((size_t) len * MAX_CONVERSION_GROWTH + 1);
			Assert(EncodingReady && GetDatabaseEncoding() == EncodingTarget);
			done = DatumGetInt32(FunctionCall6(&EncodingProc,
											   Int32GetDatum(PG_UTF8),
											   Int32GetDatum(EncodingTarget),
											   CStringGetDatum((const char *) run),
											   CStringGetDatum((char *) conv),
											   Int32GetDatum(runlen),
											   BoolGetDatum(true)));
			appendStringInfoString(&out, (char *) conv);
			run += done;
			runlen -= done;
			if (runlen <= 0)
				break;
			/* run now starts with a character the database lacks */
			l = pg_utf_mblen(run);
			EncodingEscape(&out, run, true, json);
			run += l;
			runlen -= l;
		}

		/* one byte that is not valid UTF-8 */
		if (p < end)
		{
			EncodingEscape(&out, p, false, json);
			p++;
		}
	}
	if (conv)
		pfree(conv);
	if (unescaped)
		pfree(unescaped);
	if (outlen)
		*outlen = out.len;
	return out.data;
}

/*
 * Text of the database encoding back into the UTF-8 that WeChat Pay
 * signed (a notification's body and headers, handed over as SQL text).
 * UTF-8 and SQL_ASCII databases hold the caller's bytes unchanged: they
 * are returned as they are, so a body passes byte for byte.  In other
 * encodings the conversion is exact for every character the database can
 * hold, which is every character the caller could pass.  The result may
 * be s itself; *outlen gets its length.
 */
char *
wxpay_to_utf8(const char *s, size_t len, size_t *outlen)
{
	char	   *out;

	if (GetDatabaseEncoding() == PG_UTF8 ||
		GetDatabaseEncoding() == PG_SQL_ASCII)
	{
		*outlen = len;
		return (char *) s;
	}
	out = pg_server_to_any(s, (int) len, PG_UTF8);
	*outlen = (out == s) ? len : strlen(out);
	return out;
}
