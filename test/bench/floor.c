/*-------------------------------------------------------------------------
 *
 * floor.c
 *	  The benchmark's floor: the least a client must do per stop, with no
 *	  database around it.
 *
 * For each call: build the stop path and body, sign them (OpenSSL,
 * RSA-SHA256 over "POST\nURL\nTS\nNONCE\nBODY\n"), POST over one kept-alive
 * libcurl easy handle, and verify the answer's signature with the platform
 * public key.  That is exactly the cryptography and I/O the extension does;
 * what the extension adds on top (SQL, jsonb, a typed row, latch-aware
 * waits) is what the benchmark measures against this.
 *
 * Prints one line: floor|calls|verified|wall seconds|CPU ticks, the CPU
 * time (utime + stime from /proc/self/stat) and wall time of the calls
 * after the warm-up ones.  Test tool only: errors just exit(1).
 *
 *-------------------------------------------------------------------------
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#define PLAN_PATH "/v3/payscore/sign-plan/user-sign-plans/merchant-sign-plan-no/"
#define BODY "{\"stop_reason\":\"bench\"}"

typedef struct Answer
{
	char		body[65536];
	size_t		len;
	char		ts[64];
	char		nonce[128];
	char		sig[1024];
	char		serial[128];
} Answer;

static void
die(const char *what)
{
	fprintf(stderr, "floor: %s\n", what);
	exit(1);
}

static size_t
on_body(char *p, size_t size, size_t n, void *arg)
{
	Answer	   *a = arg;
	size_t		len = size * n;

	if (a->len + len >= sizeof(a->body))
		return 0;
	memcpy(a->body + a->len, p, len);
	a->len += len;
	return len;
}

/* keep one header's value, without the line end */
static void
keep(char *dst, size_t cap, const char *v, size_t len)
{
	while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
		len--;
	if (len >= cap)
		len = cap - 1;
	memcpy(dst, v, len);
	dst[len] = '\0';
}

static size_t
on_header(char *p, size_t size, size_t n, void *arg)
{
	Answer	   *a = arg;
	size_t		len = size * n;
	char	   *colon = memchr(p, ':', len);
	size_t		nl;
	const char *v;

	if (colon == NULL)
		return len;
	nl = colon - p;
	v = colon + 1;
	while (v < p + len && *v == ' ')
		v++;
#define IS(name) (nl == strlen(name) && strncasecmp(p, name, nl) == 0)
	if (IS("Wechatpay-Timestamp"))
		keep(a->ts, sizeof(a->ts), v, p + len - v);
	else if (IS("Wechatpay-Nonce"))
		keep(a->nonce, sizeof(a->nonce), v, p + len - v);
	else if (IS("Wechatpay-Signature"))
		keep(a->sig, sizeof(a->sig), v, p + len - v);
	else if (IS("Wechatpay-Serial"))
		keep(a->serial, sizeof(a->serial), v, p + len - v);
#undef IS
	return len;
}

static long
cpu_ticks(void)
{
	char		buf[1024];
	FILE	   *f = fopen("/proc/self/stat", "r");
	size_t		n;
	char	   *p;
	long		ut,
				st;

	if (f == NULL)
		die("cannot read /proc/self/stat");
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* fields after "(comm) ": state is field 3; utime 14, stime 15 */
	p = strrchr(buf, ')');
	if (p == NULL ||
		sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %ld %ld", &ut, &st) != 2)
		die("cannot parse /proc/self/stat");
	return ut + st;
}

static EVP_PKEY *
load_key(const char *file, int private)
{
	FILE	   *f = fopen(file, "r");
	EVP_PKEY   *k;

	if (f == NULL)
		die("cannot open a key file");
	k = private ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : PEM_read_PUBKEY(f, NULL, NULL, NULL);
	fclose(f);
	if (k == NULL)
		die("cannot load a key");
	return k;
}

static double
now_secs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int
main(int argc, char **argv)
{
	const char *url, *ca, *mchid, *serial, *pubkey_id, *prefix;
	EVP_PKEY   *key, *pub;
	CURL	   *h;
	int			n, warm, verified = 0;
	long		cpu0 = 0;
	double		t0 = 0;
	static Answer a;

	if (argc != 11)
		die("usage: floor BASE_URL CA_FILE KEY_FILE MCHID SERIAL PUBKEY_FILE PUBKEY_ID PREFIX WARMUP N");
	url = argv[1];
	ca = argv[2];
	key = load_key(argv[3], 1);
	mchid = argv[4];
	serial = argv[5];
	pub = load_key(argv[6], 0);
	pubkey_id = argv[7];
	prefix = argv[8];
	warm = atoi(argv[9]);
	n = atoi(argv[10]);

	curl_global_init(CURL_GLOBAL_DEFAULT);
	h = curl_easy_init();
	if (h == NULL)
		die("cannot create a curl handle");
	curl_easy_setopt(h, CURLOPT_CAINFO, ca);
	curl_easy_setopt(h, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(h, CURLOPT_USERAGENT, "wxpay-bench-floor");
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, &a);
	curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(h, CURLOPT_HEADERDATA, &a);
	curl_easy_setopt(h, CURLOPT_POST, 1L);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, BODY);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long) strlen(BODY));

	for (int i = 0; i < warm + n; i++)
	{
		char		path[256], full[512], ts[32], nonce[33], msg[1024], auth[1024];
		unsigned char rnd[32], sig[512];
		char		sig64[700];
		size_t		siglen = sizeof(sig);
		EVP_MD_CTX *md;
		struct curl_slist *hl = NULL;
		long		status = 0;
		unsigned char vsig[512];
		int			vlen, pad = 0;
		char	   *vmsg;

		if (i == warm)
		{
			cpu0 = cpu_ticks();
			t0 = now_secs();
		}

		snprintf(path, sizeof(path), PLAN_PATH "%s-%d/stop", prefix, i);
		snprintf(full, sizeof(full), "%s%s", url, path);
		snprintf(ts, sizeof(ts), "%ld", (long) time(NULL));
		if (RAND_bytes(rnd, sizeof(rnd)) != 1)
			die("RAND_bytes failed");
		for (int j = 0; j < 32; j++)
			nonce[j] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"[rnd[j] % 62];
		nonce[32] = '\0';
		snprintf(msg, sizeof(msg), "POST\n%s\n%s\n%s\n%s\n", path, ts, nonce, BODY);

		md = EVP_MD_CTX_new();
		if (md == NULL ||
			EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, key) != 1 ||
			EVP_DigestSign(md, sig, &siglen, (unsigned char *) msg, strlen(msg)) != 1)
			die("signing failed");
		EVP_MD_CTX_free(md);
		EVP_EncodeBlock((unsigned char *) sig64, sig, (int) siglen);
		snprintf(auth, sizeof(auth),
				 "Authorization: WECHATPAY2-SHA256-RSA2048 mchid=\"%s\",nonce_str=\"%s\","
				 "signature=\"%s\",timestamp=\"%s\",serial_no=\"%s\"",
				 mchid, nonce, sig64, ts, serial);
		hl = curl_slist_append(hl, "Accept: application/json");
		hl = curl_slist_append(hl, "Content-Type: application/json");
		hl = curl_slist_append(hl, "Expect:");
		hl = curl_slist_append(hl, auth);

		memset(&a, 0, sizeof(a));
		curl_easy_setopt(h, CURLOPT_URL, full);
		curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
		if (curl_easy_perform(h) != CURLE_OK)
			die("request failed");
		curl_slist_free_all(hl);
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);

		/* verify: the key id, then the signature over ts, nonce and body */
		if (status != 200 || strcmp(a.serial, pubkey_id) != 0)
			continue;
		vlen = EVP_DecodeBlock(vsig, (unsigned char *) a.sig, (int) strlen(a.sig));
		for (size_t k = strlen(a.sig); k > 0 && a.sig[k - 1] == '='; k--)
			pad++;
		if (vlen < 0)
			continue;
		vlen -= pad;
		vmsg = malloc(a.len + 256);
		if (vmsg == NULL)
			die("out of memory");
		snprintf(vmsg, a.len + 256, "%s\n%s\n", a.ts, a.nonce);
		memcpy(vmsg + strlen(vmsg), a.body, a.len);
		{
			size_t		ml = strlen(a.ts) + strlen(a.nonce) + 2 + a.len;

			vmsg[ml] = '\n';
			md = EVP_MD_CTX_new();
			if (md != NULL &&
				EVP_DigestVerifyInit(md, NULL, EVP_sha256(), NULL, pub) == 1 &&
				EVP_DigestVerify(md, vsig, vlen, (unsigned char *) vmsg, ml + 1) == 1 &&
				i >= warm)
				verified++;
			EVP_MD_CTX_free(md);
		}
		free(vmsg);
	}

	printf("floor|%d|%d|%.3f|%ld\n", n, verified, now_secs() - t0, cpu_ticks() - cpu0);
	curl_easy_cleanup(h);
	EVP_PKEY_free(key);
	EVP_PKEY_free(pub);
	curl_global_cleanup();
	return 0;
}
