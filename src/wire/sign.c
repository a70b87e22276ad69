/*-------------------------------------------------------------------------
 *
 * sign.c
 *	  OpenSSL work: parsing keys and certificates, signing requests
 *	  (RSASSA-PKCS1-v1_5 with SHA-256), verifying answers, making nonces.
 *
 * OpenSSL allocates with malloc, so nothing here may ereport while it holds
 * an OpenSSL object: every function frees what it made before returning and
 * reports failure through its return value and a WxpayKeyError, whose text
 * never contains key material (OpenSSL's error strings name the failing
 * step, not the data).  The caller decides the SQL error.
 *
 * The EVP_PKEYs returned belong to the caller (config.c caches them for the
 * life of the backend or until the config changes).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "utils/timestamp.h"

#include "wxpay_signplan.h"

#define MIN_RSA_BITS	2048

static void key_error(WxpayKeyError *err, const char *msg);
static BIO *pem_bio(const char *pem, size_t len);
static int	no_password_cb(char *buf, int size, int rwflag, void *u);
static bool check_rsa(EVP_PKEY *pkey, WxpayKeyError *err);
static bool asn1_time_to_timestamptz(const ASN1_TIME *t, TimestampTz *result);

/*
 * Record our words and the newest OpenSSL error, then clear OpenSSL's queue
 * so that a later failure does not report a stale cause.
 */
static void
key_error(WxpayKeyError *err, const char *msg)
{
	unsigned long code = ERR_peek_last_error();

	strlcpy(err->msg, msg, sizeof(err->msg));
	if (code != 0)
		ERR_error_string_n(code, err->lib, sizeof(err->lib));
	else
		err->lib[0] = '\0';
	ERR_clear_error();
}

/* A read-only BIO over the PEM text, skipping leading white space. */
static BIO *
pem_bio(const char *pem, size_t len)
{
	while (len > 0 && (*pem == ' ' || *pem == '\t' || *pem == '\r' || *pem == '\n'))
	{
		pem++;
		len--;
	}
	if (len > INT_MAX)
		return NULL;
	return BIO_new_mem_buf(pem, (int) len);
}

/* Encrypted PEMs are refused rather than prompting for a password. */
static int
no_password_cb(char *buf, int size, int rwflag, void *u)
{
	(void) buf;
	(void) size;
	(void) rwflag;
	(void) u;
	return -1;
}

static bool
check_rsa(EVP_PKEY *pkey, WxpayKeyError *err)
{
	if (EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA)
	{
		key_error(err, "the key is not an RSA key");
		return false;
	}
	if (EVP_PKEY_get_bits(pkey) < MIN_RSA_BITS)
	{
		key_error(err, "the RSA key is shorter than 2048 bits");
		return false;
	}
	return true;
}

EVP_PKEY *
wxpay_load_private_key(const char *pem, size_t len, WxpayKeyError *err)
{
	BIO		   *bio;
	EVP_PKEY   *pkey;

	ERR_clear_error();
	if (memmem(pem, len, "ENCRYPTED", 9) != NULL)
	{
		key_error(err, "the private key is encrypted; store it unencrypted (apiclient_key.pem as downloaded)");
		return NULL;
	}
	bio = pem_bio(pem, len);
	if (bio == NULL)
	{
		key_error(err, "out of memory");
		return NULL;
	}
	pkey = PEM_read_bio_PrivateKey(bio, NULL, no_password_cb, NULL);
	BIO_free(bio);
	if (pkey == NULL)
	{
		key_error(err, "the private key is not a PEM RSA private key (PKCS#8 or PKCS#1)");
		return NULL;
	}
	if (!check_rsa(pkey, err))
	{
		EVP_PKEY_free(pkey);
		return NULL;
	}

	/*
	 * A damaged PEM can still decode; check that the key's parts belong
	 * together (n = p * q, e * d = 1) so that we never sign with it.
	 */
	{
		EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new(pkey, NULL);
		bool		ok = ctx != NULL && EVP_PKEY_pairwise_check(ctx) == 1;

		EVP_PKEY_CTX_free(ctx);
		if (!ok)
		{
			key_error(err, "the private key is damaged: its parts do not belong together");
			EVP_PKEY_free(pkey);
			return NULL;
		}
	}
	return pkey;
}

EVP_PKEY *
wxpay_load_public_key(const char *pem, size_t len, WxpayKeyError *err)
{
	BIO		   *bio;
	EVP_PKEY   *pkey;

	ERR_clear_error();
	bio = pem_bio(pem, len);
	if (bio == NULL)
	{
		key_error(err, "out of memory");
		return NULL;
	}
	pkey = PEM_read_bio_PUBKEY(bio, NULL, no_password_cb, NULL);
	BIO_free(bio);
	if (pkey == NULL)
	{
		key_error(err, "the WeChat Pay public key is not a PEM public key (BEGIN PUBLIC KEY)");
		return NULL;
	}
	if (!check_rsa(pkey, err))
	{
		EVP_PKEY_free(pkey);
		return NULL;
	}
	return pkey;
}

static bool
asn1_time_to_timestamptz(const ASN1_TIME *t, TimestampTz *result)
{
	struct tm	tm;

	if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
		return false;
	/* timegm-free: reuse the RFC 3339 parser on a formatted copy */
	{
		char		buf[32];
		int			n;

		n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02dZ",
					 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
					 tm.tm_hour, tm.tm_min, tm.tm_sec);
		if (n <= 0 || n >= (int) sizeof(buf))
			return false;
		return wxpay_parse_rfc3339(buf, n, result);
	}
}

/*
 * Parse a PEM certificate; return its public key, its serial as upper-case
 * hex and its validity period.
 */
EVP_PKEY *
wxpay_load_certificate(const char *pem, size_t len,
					   char *serial_hex, size_t serial_cap,
					   TimestampTz *not_before, TimestampTz *not_after,
					   WxpayKeyError *err)
{
	BIO		   *bio;
	X509	   *x509;
	EVP_PKEY   *pkey = NULL;
	BIGNUM	   *bn = NULL;
	char	   *hex = NULL;

	ERR_clear_error();
	bio = pem_bio(pem, len);
	if (bio == NULL)
	{
		key_error(err, "out of memory");
		return NULL;
	}
	x509 = PEM_read_bio_X509(bio, NULL, no_password_cb, NULL);
	BIO_free(bio);
	if (x509 == NULL)
	{
		key_error(err, "the platform certificate is not a PEM X.509 certificate");
		return NULL;
	}

	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x509), NULL);
	if (bn != NULL)
		hex = BN_bn2hex(bn);
	if (hex == NULL || strlen(hex) >= serial_cap)
	{
		key_error(err, "the platform certificate's serial number cannot be read");
		goto done;
	}
	strlcpy(serial_hex, hex, serial_cap);

	if (!asn1_time_to_timestamptz(X509_get0_notBefore(x509), not_before) ||
		!asn1_time_to_timestamptz(X509_get0_notAfter(x509), not_after))
	{
		key_error(err, "the platform certificate's validity period cannot be read");
		goto done;
	}

	pkey = X509_get_pubkey(x509);
	if (pkey == NULL)
		key_error(err, "the platform certificate's public key cannot be read");
	else if (!check_rsa(pkey, err))
	{
		EVP_PKEY_free(pkey);
		pkey = NULL;
	}

done:
	OPENSSL_free(hex);
	BN_free(bn);
	X509_free(x509);
	return pkey;
}

/*
 * 32 characters from [0-9A-Za-z], drawn from the strong RNG without modulo
 * bias (bytes >= 248 are redrawn; 248 = 4 * 62).
 */
void
wxpay_make_nonce(char *out)
{
	static const char alphabet[] =
	"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
	int			n = 0;

	while (n < WXPAY_NONCE_LEN)
	{
		unsigned char buf[WXPAY_NONCE_LEN * 2];

		if (!pg_strong_random(buf, sizeof(buf)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate a random nonce")));
		for (size_t i = 0; i < sizeof(buf) && n < WXPAY_NONCE_LEN; i++)
		{
			if (buf[i] < 248)
				out[n++] = alphabet[buf[i] % 62];
		}
	}
	out[n] = '\0';
}

/*
 * Sign msg with SHA256withRSA (PKCS#1 v1.5); return the Base64 signature,
 * palloc'd in the current context, or NULL with err filled in.
 */
char *
wxpay_sign_base64(EVP_PKEY *key, const char *msg, size_t len, WxpayKeyError *err)
{
	EVP_MD_CTX *md;
	unsigned char sig[1024];
	size_t		siglen = sizeof(sig);
	char	   *b64;
	bool		ok;

	ERR_clear_error();
	if ((size_t) EVP_PKEY_get_size(key) > sizeof(sig))
	{
		key_error(err, "the private key is too large");
		return NULL;
	}
	md = EVP_MD_CTX_new();
	if (md == NULL)
	{
		key_error(err, "out of memory");
		return NULL;
	}
	ok = EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
		EVP_DigestSign(md, sig, &siglen, (const unsigned char *) msg, len) == 1;
	EVP_MD_CTX_free(md);
	if (!ok)
	{
		key_error(err, "could not sign the request");
		return NULL;
	}

	/* no OpenSSL object is held past this point, so palloc may throw */
	b64 = palloc(wxpay_base64_encoded_len(siglen) + 1);
	wxpay_base64_encode(sig, siglen, b64);
	return b64;
}

/*
 * Verify a Base64 SHA256withRSA signature over msg.  Anything that is not a
 * valid signature by this key (bad Base64, wrong length, a probe) is false.
 */
bool
wxpay_verify_base64(EVP_PKEY *key, const char *msg, size_t len,
					const char *sig_b64, size_t sig_len)
{
	unsigned char sig[1024];
	size_t		siglen;
	EVP_MD_CTX *md;
	bool		ok;

	if (!wxpay_base64_decode(sig_b64, sig_len, sig, sizeof(sig), &siglen))
		return false;
	if (siglen != (size_t) EVP_PKEY_get_size(key))
		return false;

	md = EVP_MD_CTX_new();
	if (md == NULL)
		return false;
	ok = EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, key) == 1 &&
		EVP_DigestVerify(md, sig, siglen, (const unsigned char *) msg, len) == 1;
	EVP_MD_CTX_free(md);
	ERR_clear_error();
	return ok;
}

/*
 * Count the certificates in a PEM bundle (ca_cert); -1 with err filled in
 * when there is none or one of them cannot be parsed.
 */
int
wxpay_count_certificates(const char *pem, size_t len, WxpayKeyError *err)
{
	BIO		   *bio;
	int			n = 0;
	bool		ok = true;

	ERR_clear_error();
	bio = pem_bio(pem, len);
	if (bio == NULL)
	{
		key_error(err, "out of memory");
		return -1;
	}
	for (;;)
	{
		X509	   *x509 = PEM_read_bio_X509(bio, NULL, no_password_cb, NULL);
		unsigned long code;

		if (x509 != NULL)
		{
			X509_free(x509);
			n++;
			continue;
		}
		/* the end of the text is "no start line"; anything else is damage */
		code = ERR_peek_last_error();
		if (ERR_GET_LIB(code) != ERR_LIB_PEM ||
			ERR_GET_REASON(code) != PEM_R_NO_START_LINE)
			ok = false;
		break;
	}
	BIO_free(bio);
	if (!ok)
	{
		key_error(err, n == 0 ?
				  "the first certificate cannot be parsed" :
				  "a certificate after the first cannot be parsed");
		return -1;
	}
	ERR_clear_error();
	if (n == 0)
	{
		key_error(err, "it contains no PEM certificate (BEGIN CERTIFICATE)");
		return -1;
	}
	return n;
}

/*
 * AEAD_AES_256_GCM decryption as WeChat Pay uses it for platform
 * certificates: key = the 32-byte APIv3 key, IV = the 12-byte nonce string,
 * AAD = associated_data, input = ciphertext followed by the 16-byte tag.
 * Returns the plaintext (NUL-terminated, palloc'd in the current context)
 * and its length, or NULL with err filled in.  Nothing is returned unless
 * the tag verifies: a wrong key and an altered ciphertext or tag look alike.
 */
char *
wxpay_aes256gcm_decrypt(const unsigned char *key, size_t keylen,
						const char *nonce, size_t noncelen,
						const char *aad, size_t aadlen,
						const unsigned char *in, size_t inlen,
						size_t *outlen, WxpayKeyError *err)
{
	EVP_CIPHER_CTX *ctx;
	unsigned char *out;
	size_t		ctlen;
	int			n1 = 0,
				n2 = 0;
	bool		ok;

	if (keylen != WXPAY_APIV3_KEY_LEN)
	{
		key_error(err, "the APIv3 key is not 32 bytes long");
		return NULL;
	}
	if (noncelen != WXPAY_GCM_NONCE_LEN)
	{
		key_error(err, "the nonce is not 12 bytes long");
		return NULL;
	}
	if (inlen < WXPAY_GCM_TAG_LEN || inlen - WXPAY_GCM_TAG_LEN > INT_MAX ||
		aadlen > INT_MAX)
	{
		key_error(err, "the ciphertext is too short or too long");
		return NULL;
	}
	ctlen = inlen - WXPAY_GCM_TAG_LEN;

	/* palloc before any OpenSSL object exists: it may throw */
	out = palloc(ctlen + 1);

	ERR_clear_error();
	ctx = EVP_CIPHER_CTX_new();
	if (ctx == NULL)
	{
		pfree(out);
		key_error(err, "out of memory");
		return NULL;
	}
	ok = EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, (int) noncelen, NULL) == 1 &&
		EVP_DecryptInit_ex(ctx, NULL, NULL, key, (const unsigned char *) nonce) == 1 &&
		(aadlen == 0 ||
		 EVP_DecryptUpdate(ctx, NULL, &n1, (const unsigned char *) aad, (int) aadlen) == 1) &&
		EVP_DecryptUpdate(ctx, out, &n1, in, (int) ctlen) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, WXPAY_GCM_TAG_LEN,
							(void *) (in + ctlen)) == 1 &&
		EVP_DecryptFinal_ex(ctx, out + n1, &n2) == 1;
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
	{
		/* unauthenticated plaintext must not survive */
		explicit_bzero(out, ctlen + 1);
		pfree(out);
		key_error(err, "the tag does not match: the ciphertext or its tag was altered, or the APIv3 key is wrong");
		return NULL;
	}
	*outlen = (size_t) n1 + (size_t) n2;
	out[*outlen] = '\0';
	return (char *) out;
}
