/*-------------------------------------------------------------------------
 *
 * seal.c
 *	  Sealing secrets at rest: AES-256-GCM under a 256-bit root key, and the
 *	  text form a sealed value is stored in.  Pure of SQL.
 *
 * The sealed text form is
 *
 *		wxsealed:v1:<fingerprint>:<Base64(nonce | ciphertext | tag)>
 *
 * "v1" names the format (AES-256-GCM, a 12-byte random nonce per value, a
 * 16-byte tag); the fingerprint is 16 lower-case hexadecimal digits, the
 * first 8 bytes of SHA-256 over a domain-separation label and the root key,
 * so it names the key without revealing it.  The associated data are
 * chosen by the caller (config/rootkey.c binds each value to its row and
 * column); they are authenticated, not stored.
 *
 * As in sign.c, nothing here may ereport while an OpenSSL object is held:
 * failures come back through the return value and a WxpayKeyError whose
 * text never holds key material or plaintext.  Plaintext buffers that are
 * given up are zeroed first.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "wxpay_signplan.h"

#define SEAL_FP_LABEL	"wxpay_signplan root key fingerprint v1"

static void SealError(WxpayKeyError *err, const char *msg);

static void
SealError(WxpayKeyError *err, const char *msg)
{
	unsigned long e = ERR_peek_last_error();

	strlcpy(err->msg, msg, sizeof(err->msg));
	err->lib[0] = '\0';
	if (e != 0)
		ERR_error_string_n(e, err->lib, sizeof(err->lib));
	ERR_clear_error();
}

/* The fingerprint of a root key: 16 hex digits and a NUL into out. */
void
wxpay_seal_fingerprint(const unsigned char *key, char *out)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	unsigned int mdlen = 0;
	bool		ok;

	ok = ctx != NULL &&
		EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 &&
		EVP_DigestUpdate(ctx, SEAL_FP_LABEL, sizeof(SEAL_FP_LABEL)) == 1 &&
		EVP_DigestUpdate(ctx, key, WXPAY_ROOT_KEY_LEN) == 1 &&
		EVP_DigestFinal_ex(ctx, md, &mdlen) == 1;
	EVP_MD_CTX_free(ctx);
	if (!ok)
		elog(ERROR, "could not compute a SHA-256 digest");
	for (int i = 0; i < WXPAY_SEAL_FP_LEN / 2; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	out[WXPAY_SEAL_FP_LEN] = '\0';
	explicit_bzero(md, sizeof(md));
}

/* Is s (NUL-terminated) in the sealed text form (any version)? */
bool
wxpay_seal_is_sealed(const char *s)
{
	return s != NULL && strncmp(s, WXPAY_SEAL_PREFIX, strlen(WXPAY_SEAL_PREFIX)) == 0;
}

/*
 * Split a sealed value into its fingerprint (into fp, 17 bytes) and its
 * payload.  False when it is not v1 sealed text.
 */
bool
wxpay_seal_parse(const char *s, char *fp, const char **payload)
{
	const char *p;

	if (strncmp(s, WXPAY_SEAL_PREFIX "v1:", strlen(WXPAY_SEAL_PREFIX "v1:")) != 0)
		return false;
	p = s + strlen(WXPAY_SEAL_PREFIX "v1:");
	if (strlen(p) < WXPAY_SEAL_FP_LEN + 1 || p[WXPAY_SEAL_FP_LEN] != ':' ||
		!wxpay_is_hex(p, WXPAY_SEAL_FP_LEN))
		return false;
	memcpy(fp, p, WXPAY_SEAL_FP_LEN);
	fp[WXPAY_SEAL_FP_LEN] = '\0';
	*payload = p + WXPAY_SEAL_FP_LEN + 1;
	return true;
}

/*
 * Seal len bytes of plain under key (WXPAY_ROOT_KEY_LEN bytes) with the
 * associated data aad: the sealed text form, palloc'd, or NULL with err
 * filled.
 */
char *
wxpay_seal(const unsigned char *key, const char *aad, size_t aadlen,
		   const char *plain, size_t len, WxpayKeyError *err)
{
	EVP_CIPHER_CTX *ctx;
	unsigned char *raw;
	size_t		rawlen = WXPAY_GCM_NONCE_LEN + len + WXPAY_GCM_TAG_LEN;
	char		fp[WXPAY_SEAL_FP_LEN + 1];
	char	   *out;
	size_t		prefix;
	int			n1 = 0,
				n2 = 0;
	bool		ok;

	if (len > INT_MAX / 2 || aadlen > INT_MAX)
	{
		SealError(err, "the value is too long to seal");
		return NULL;
	}
	wxpay_seal_fingerprint(key, fp);

	/* palloc before any OpenSSL object exists: it may throw */
	raw = palloc(rawlen);
	prefix = strlen(WXPAY_SEAL_PREFIX "v1:") + WXPAY_SEAL_FP_LEN + 1;
	out = palloc(prefix + wxpay_base64_encoded_len(rawlen) + 1);

	ERR_clear_error();
	if (RAND_bytes(raw, WXPAY_GCM_NONCE_LEN) != 1)
	{
		pfree(raw);
		pfree(out);
		SealError(err, "could not generate a random nonce");
		return NULL;
	}
	ctx = EVP_CIPHER_CTX_new();
	ok = ctx != NULL &&
		EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, WXPAY_GCM_NONCE_LEN, NULL) == 1 &&
		EVP_EncryptInit_ex(ctx, NULL, NULL, key, raw) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &n1, (const unsigned char *) aad, (int) aadlen) == 1 &&
		EVP_EncryptUpdate(ctx, raw + WXPAY_GCM_NONCE_LEN, &n1,
						  (const unsigned char *) plain, (int) len) == 1 &&
		EVP_EncryptFinal_ex(ctx, raw + WXPAY_GCM_NONCE_LEN + n1, &n2) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, WXPAY_GCM_TAG_LEN,
							raw + WXPAY_GCM_NONCE_LEN + len) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok || (size_t) n1 + (size_t) n2 != len)
	{
		explicit_bzero(raw, rawlen);
		pfree(raw);
		pfree(out);
		SealError(err, "could not encrypt with AES-256-GCM");
		return NULL;
	}
	snprintf(out, prefix + 1, WXPAY_SEAL_PREFIX "v1:%s:", fp);
	out[prefix + wxpay_base64_encode(raw, rawlen, out + prefix)] = '\0';
	pfree(raw);
	return out;
}

/*
 * Open the payload of a v1 sealed value (after the fingerprint) under key
 * with the associated data aad: the plaintext, palloc'd and NUL-terminated
 * (*outlen bytes), or NULL with err filled when it is malformed or does
 * not authenticate (wrong key, wrong row or column, altered).
 */
char *
wxpay_seal_open(const unsigned char *key, const char *aad, size_t aadlen,
				const char *payload, size_t *outlen, WxpayKeyError *err)
{
	size_t		b64len = strlen(payload);
	size_t		cap = b64len / 4 * 3 + 3;
	unsigned char *raw = palloc(cap);
	size_t		rawlen;
	char	   *plain;

	if (!wxpay_base64_decode(payload, b64len, raw, cap, &rawlen) ||
		rawlen < WXPAY_GCM_NONCE_LEN + WXPAY_GCM_TAG_LEN)
	{
		pfree(raw);
		SealError(err, "the sealed value is malformed");
		return NULL;
	}
	plain = wxpay_aes256gcm_decrypt(key, WXPAY_ROOT_KEY_LEN,
									(const char *) raw, WXPAY_GCM_NONCE_LEN,
									aad, aadlen,
									raw + WXPAY_GCM_NONCE_LEN,
									rawlen - WXPAY_GCM_NONCE_LEN,
									outlen, err);
	pfree(raw);
	if (plain == NULL)
		SealError(err, "the sealed value does not authenticate under this root key for this row and column");
	return plain;
}
