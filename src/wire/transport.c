/*-------------------------------------------------------------------------
 *
 * transport.c
 *	  HTTPS for wxpay_signplan: one libcurl multi handle per backend, a small
 *	  pool of easy handles, and a wait loop built on PostgreSQL's latch.
 *
 * Why the multi interface.  curl_easy_perform() waits inside libcurl, where
 * a query cancel or statement_timeout can only be noticed at the next
 * progress callback (up to a second later).  Here libcurl tells us which
 * sockets it waits on (CURLMOPT_SOCKETFUNCTION) and for how long
 * (CURLMOPT_TIMERFUNCTION), and we wait on those sockets and MyLatch in one
 * WaitEventSet.  PostgreSQL's SIGINT and timeout handlers set the latch, so
 * a cancel wakes the loop at once; we then detach the transfers, free what
 * libcurl allocated, and let CHECK_FOR_INTERRUPTS() raise PostgreSQL's own
 * error (57014).  Nothing ever longjmps through libcurl: the callbacks never
 * ereport (they allocate with MCXT_ALLOC_NO_OOM and record failures).
 *
 * Keep-alive.  The multi handle owns libcurl's connection cache and lives as
 * long as the backend, so successive calls reuse one TLS connection per
 * host.  Easy handles are kept too (TLS session reuse); each request sets
 * every option that varies, so nothing leaks from one request to the next.
 *
 * Many at once.  The transfer loop keeps up to N requests in flight, one
 * pooled easy handle (and so one kept-alive connection) each.  It takes
 * them from an array (wxpay_http_perform) or pulls them one by one from the
 * caller as slots free up and hands each back as it finishes
 * (wxpay_http_perform_stream), so a batch never has more than N signed
 * requests and answers in memory.
 *
 * Where requests go.  The URL comes only from the config table (validated by
 * wxpay_validate_base_url()); proxies from the environment are disabled,
 * only https is allowed, redirects are not followed, and peer and host
 * verification are always on.
 *
 * Classification.  A transfer that fails before libcurl wrote any request
 * byte (DNS, connect, TLS handshake, connect timeout) is NOT_SENT: nothing
 * can have reached WeChat Pay.  Any later failure is FAILED: the platform
 * may have acted.
 *
 * Never twice.  When a kept-alive connection dies before any answer byte,
 * libcurl on its own sends the same request again on a fresh connection.
 * The first copy may have been acted on, and WeChat Pay refuses the copy (a
 * replayed nonce, or "already stopped"), which would read as a rejection of
 * a request that in fact succeeded.  CURLOPT_PREREQFUNCTION sees every
 * attempt to send and aborts the second one, so the request is FAILED
 * (outcome unknown), as it must be.  Older libcurl lacks that callback;
 * there every request gets a fresh connection instead.
 *
 * Failover.  A request with a backup_url whose transfer to url ends NOT_SENT
 * because the host could not be reached (DNS, refused or unreachable, connect
 * timeout, a TLS handshake cut short) is re-aimed at backup_url on the same
 * easy handle, with the same headers and body: the signature covers the path,
 * not the host, so the signed request is valid there too.  Only once, and
 * never after a request byte may have left.  A certificate that fails
 * verification is not "unreachable": it is what an interception looks like,
 * and switching hosts silently would hide it, so it ends the request.  The
 * backup gets what is left of wxpay.request_timeout, so that setting stays
 * the bound on the whole request.  It happens inside the transfer loop, so
 * every caller of wxpay_http_perform(), one request or many, gets it.
 *
 * Time.  Each request records how long its exchange took (elapsed_us), from
 * the moment the transfer loop hands it to libcurl until it ends, a
 * failover included: the figure the statistics (stats.c) report.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "wxpay_signplan.h"

/* settings (defined in TransportInit) */
int			wxpay_connect_timeout = 10000;	/* ms */
int			wxpay_request_timeout = 30000;	/* ms */

#define MAX_EASY		64		/* most transfers in flight at once */
#define MAX_SOCKETS		256		/* most sockets libcurl may watch at once */

typedef struct SocketWatch
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} SocketWatch;

/* local state */
static CURLM *Multi = NULL;
static CURL *Easy[MAX_EASY];
static int	NEasy = 0;
static char *UserAgent = NULL;
static SocketWatch Sockets[MAX_SOCKETS];
static int	NSockets = 0;
static long TimerMs = -1;
static WaitEventSet *CurrentWes = NULL;

/* the wait event of the current wxpay_http_perform*() (waitevent.c) */
static uint32 PerformWaitEvent;

/* per-slot state of wxpay_http_perform(), static so PG_FINALLY sees it */
static int	NSlots = 0;
static struct curl_slist *SlotHeaders[MAX_EASY];
static WxpayHttpRequest *SlotRequest[MAX_EASY];

/* where the transfer loop takes requests from (see PerformRun) */
typedef struct ArraySource
{
	WxpayHttpRequest **reqs;
	int			nreqs;
	int			next;
} ArraySource;

static int	SocketCallback(CURL *easy, curl_socket_t s, int what, void *userp,
						   void *socketp);
static int	TimerCallback(CURLM *multi, long timeout_ms, void *userp);
static size_t WriteCallback(char *ptr, size_t size, size_t nmemb, void *userdata);
static size_t HeaderCallback(char *ptr, size_t size, size_t nitems, void *userdata);
#if LIBCURL_VERSION_NUM >= 0x075000
static int	PrereqCallback(void *clientp, char *conn_primary_ip, char *conn_local_ip,
						   int conn_primary_port, int conn_local_port);
#endif
static const char *UserAgentGet(void);
static CURL *EasyGet(int i);
static void RequestStart(CURL *easy, WxpayHttpRequest *req,
						 struct curl_slist **headers);
static void RequestFinish(CURL *easy, WxpayHttpRequest *req, CURLcode rc);
static bool WaitOnce(long max_ms);
static bool PerformLoop(WxpayHttpNext next, WxpayHttpPoll poll,
						WxpayHttpDone done, void *arg);
static void PerformRun(int concurrency, WxpayHttpNext next,
					   WxpayHttpPoll poll, WxpayHttpDone done, void *arg);
static WxpayHttpRequest *ArrayNext(void *arg);
static void HeadersReset(WxpayHttpRequest *req);
static WxpayTransportOutcome FailedOutcome(CURL *easy);
static bool FailoverWanted(CURL *easy, WxpayHttpRequest *req, CURLcode rc);
static void FailoverStart(CURL *easy, WxpayHttpRequest *req, CURLcode rc);

void
TransportInit(void)
{
	DefineCustomIntVariable("wxpay.connect_timeout",
							"Sets the time allowed to connect to WeChat Pay, TLS handshake included.",
							"A request that cannot connect in time fails with SQLSTATE WX004: nothing was sent.",
							&wxpay_connect_timeout,
							10000, 1, 3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							wxpay_pinned_check_hook, NULL, NULL);

	DefineCustomIntVariable("wxpay.request_timeout",
							"Sets the total time allowed for one WeChat Pay request, connecting included.",
							"A request still unanswered after this time fails; once sent, its outcome is unknown (SQLSTATE WX003).",
							&wxpay_request_timeout,
							30000, 1, 3600 * 1000,
							PGC_USERSET,
							GUC_UNIT_MS,
							wxpay_pinned_check_hook, NULL, NULL);

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not initialize libcurl")));
}

/* "wxpay_signplan/<v> libcurl/<v> PostgreSQL/<v>", built once */
static const char *
UserAgentGet(void)
{
	if (UserAgent == NULL)
	{
		curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);

		UserAgent = MemoryContextStrdup(TopMemoryContext,
										psprintf("wxpay_signplan/%s libcurl/%s PostgreSQL/%s",
												 WXPAY_VERSION, vi->version, PG_VERSION));
	}
	return UserAgent;
}

/*
 * Check that url is https://host[:port] with nothing else (no user info,
 * path, query or fragment) and return it normalised, palloc'd; or NULL with
 * the reason in why.
 */
char *
wxpay_validate_base_url(const char *url, char *why, size_t whylen)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL,
			   *host = NULL,
			   *port = NULL,
			   *path = NULL,
			   *part = NULL;
	char		result[512];
	bool		ok = false;

	if (u == NULL)
	{
		strlcpy(why, "Out of memory.", whylen);
		return NULL;
	}
	if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK)
		strlcpy(why, "It is not a valid URL.", whylen);
	else if (curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
			 strcmp(scheme, "https") != 0)
		strlcpy(why, "Only https:// URLs are accepted.", whylen);
	else if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		strlcpy(why, "The URL has no host.", whylen);
	else if (curl_url_get(u, CURLUPART_USER, &part, 0) == CURLUE_OK ||
			 curl_url_get(u, CURLUPART_OPTIONS, &part, 0) == CURLUE_OK)
		strlcpy(why, "The URL must not contain user information.", whylen);
	else if (curl_url_get(u, CURLUPART_QUERY, &part, 0) == CURLUE_OK ||
			 curl_url_get(u, CURLUPART_FRAGMENT, &part, 0) == CURLUE_OK)
		strlcpy(why, "The URL must not contain a query or fragment.", whylen);
	else if (curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK &&
			 strcmp(path, "/") != 0 && strcmp(path, "") != 0)
		strlcpy(why, "The URL must not contain a path.", whylen);
	else
	{
		int			n;

		if (curl_url_get(u, CURLUPART_PORT, &port, CURLU_NO_DEFAULT_PORT) == CURLUE_OK)
			n = snprintf(result, sizeof(result), "https://%s:%s", host, port);
		else
			n = snprintf(result, sizeof(result), "https://%s", host);
		if (n > 0 && n < (int) sizeof(result))
			ok = true;
		else
			strlcpy(why, "The URL is too long.", whylen);
	}

	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_free(path);
	curl_free(part);
	curl_url_cleanup(u);
	return ok ? pstrdup(result) : NULL;
}

/* CURLMOPT_SOCKETFUNCTION: keep our list of watched sockets current */
static int
SocketCallback(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	int			i;

	(void) easy;
	(void) userp;
	(void) socketp;

	for (i = 0; i < NSockets; i++)
		if (Sockets[i].fd == s)
			break;

	if (what == CURL_POLL_REMOVE)
	{
		if (i < NSockets)
			Sockets[i] = Sockets[--NSockets];
		return 0;
	}
	if (i == NSockets)
	{
		if (NSockets >= MAX_SOCKETS)
			return -1;			/* libcurl fails that transfer */
		NSockets++;
	}
	Sockets[i].fd = s;
	Sockets[i].what = what;
	return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 means no timer */
static int
TimerCallback(CURLM *multi, long timeout_ms, void *userp)
{
	(void) multi;
	(void) userp;
	TimerMs = timeout_ms;
	return 0;
}

/*
 * CURLOPT_WRITEFUNCTION: append to the answer buffer.  Refuses (and so
 * aborts the transfer) past WXPAY_MAX_RESPONSE_BYTES or when memory runs
 * out; never ereports.
 */
static size_t
WriteCallback(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	WxpayHttpRequest *req = (WxpayHttpRequest *) userdata;
	size_t		n = size * nmemb;

	if (req->resp_len + n > WXPAY_MAX_RESPONSE_BYTES)
	{
		req->too_large = true;
		return 0;
	}
	if (req->resp_len + n + 1 > req->resp_cap)
	{
		size_t		newcap = Max(req->resp_cap * 2, 16384);
		char	   *p;

		while (newcap < req->resp_len + n + 1)
			newcap *= 2;
		newcap = Min(newcap, (size_t) WXPAY_MAX_RESPONSE_BYTES + 1);
		p = MemoryContextAllocExtended(req->resp_cxt, newcap, MCXT_ALLOC_NO_OOM);
		if (p == NULL)
			return 0;
		if (req->resp_len > 0)
			memcpy(p, req->resp, req->resp_len);
		if (req->resp)
			pfree(req->resp);
		req->resp = p;
		req->resp_cap = newcap;
	}
	memcpy(req->resp + req->resp_len, ptr, n);
	req->resp_len += n;
	req->resp[req->resp_len] = '\0';
	return n;
}

static void
HeadersReset(WxpayHttpRequest *req)
{
	memset(&req->h_timestamp, 0, sizeof(WxpayHeaderValue));
	memset(&req->h_nonce, 0, sizeof(WxpayHeaderValue));
	memset(&req->h_signature, 0, sizeof(WxpayHeaderValue));
	memset(&req->h_serial, 0, sizeof(WxpayHeaderValue));
	memset(&req->h_request_id, 0, sizeof(WxpayHeaderValue));
}

/*
 * How far a failed transfer got: once libcurl has written request bytes the
 * platform may have acted on them.
 */
static WxpayTransportOutcome
FailedOutcome(CURL *easy)
{
	long		reqsize = 0;

	curl_easy_getinfo(easy, CURLINFO_REQUEST_SIZE, &reqsize);
	return reqsize > 0 ? WXPAY_TRANSPORT_FAILED : WXPAY_TRANSPORT_NOT_SENT;
}

/* CURLOPT_HEADERFUNCTION: keep the headers that verification needs */
static size_t
HeaderCallback(char *ptr, size_t size, size_t nitems, void *userdata)
{
	WxpayHttpRequest *req = (WxpayHttpRequest *) userdata;
	size_t		n = size * nitems;
	const char *name,
			   *value;
	size_t		namelen,
				valuelen;
	WxpayHeaderValue *slots[WXPAY_NUM_ANSWER_HEADERS] = {
		[WXPAY_H_TIMESTAMP] = &req->h_timestamp,
		[WXPAY_H_NONCE] = &req->h_nonce,
		[WXPAY_H_SIGNATURE] = &req->h_signature,
		[WXPAY_H_SERIAL] = &req->h_serial,
		[WXPAY_H_REQUEST_ID] = &req->h_request_id,
	};
	int			which;

	/* a new status line starts a new answer (e.g. after 100 Continue) */
	if (n >= 5 && strncmp(ptr, "HTTP/", 5) == 0)
	{
		HeadersReset(req);
		return n;
	}
	if (!wxpay_parse_header_line(ptr, n, &name, &namelen, &value, &valuelen))
		return n;

	which = wxpay_answer_header(name, namelen);
	if (which >= 0)
		wxpay_store_header(slots[which], value, valuelen);
	return n;
}

#if LIBCURL_VERSION_NUM >= 0x075000
/*
 * CURLOPT_PREREQFUNCTION: called each time libcurl is about to send the
 * request.  A second time means libcurl wants to resend it after a
 * connection died: refuse (see "Never twice" above).
 */
static int
PrereqCallback(void *clientp, char *conn_primary_ip, char *conn_local_ip,
			   int conn_primary_port, int conn_local_port)
{
	WxpayHttpRequest *req = (WxpayHttpRequest *) clientp;

	(void) conn_primary_ip;
	(void) conn_local_ip;
	(void) conn_primary_port;
	(void) conn_local_port;
	if (++req->nsends > 1)
		return CURL_PREREQFUNC_ABORT;
	return CURL_PREREQFUNC_OK;
}
#endif

/* The i-th pooled easy handle, with the options that never change. */
static CURL *
EasyGet(int i)
{
	CURL	   *e;

	if (Multi == NULL)
	{
		Multi = curl_multi_init();
		if (Multi == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl multi handle")));
		curl_multi_setopt(Multi, CURLMOPT_SOCKETFUNCTION, SocketCallback);
		curl_multi_setopt(Multi, CURLMOPT_TIMERFUNCTION, TimerCallback);
		curl_multi_setopt(Multi, CURLMOPT_MAXCONNECTS, (long) MAX_EASY);
	}
	while (NEasy <= i)
	{
		e = curl_easy_init();
		if (e == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("could not create a libcurl handle")));
		Easy[NEasy++] = e;
		curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
		curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "https");
		curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "https");
#else
		curl_easy_setopt(e, CURLOPT_PROTOCOLS, (long) CURLPROTO_HTTPS);
		curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS, (long) CURLPROTO_HTTPS);
#endif
		curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
		curl_easy_setopt(e, CURLOPT_PROXY, "");
		curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long) CURL_HTTP_VERSION_1_1);
		curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
		curl_easy_setopt(e, CURLOPT_USERAGENT, UserAgentGet());
		curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE,
						 (curl_off_t) WXPAY_MAX_RESPONSE_BYTES);
		curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, WriteCallback);
		curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, HeaderCallback);
#if LIBCURL_VERSION_NUM >= 0x075000
		curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, PrereqCallback);
#else
		curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
#endif
	}
	return Easy[i];
}

/* Point an easy handle at req; *headers receives the list to free later. */
static void
RequestStart(CURL *easy, WxpayHttpRequest *req, struct curl_slist **headers)
{
	struct curl_slist *h = NULL;
	struct curl_slist *t;
	struct curl_blob blob;

	req->outcome = WXPAY_TRANSPORT_NOT_SENT;
	req->errbuf[0] = '\0';
	req->too_large = false;
	req->timed_out = false;
	req->nsends = 0;
	req->failed_over = false;
	req->primary_errbuf[0] = '\0';
	req->status = 0;
	req->resp_len = 0;
	if (req->resp)
		req->resp[0] = '\0';
	HeadersReset(req);
	req->started = GetCurrentTimestamp();
	req->elapsed_us = -1;
	if (req->resp_cxt == NULL)
		req->resp_cxt = CurrentMemoryContext;

	/* curl_slist_append copies; a NULL return means out of memory */
	if ((t = curl_slist_append(h, "Accept: application/json")) != NULL)
		h = t;
	if (t && strcmp(req->method, "POST") == 0 &&
		(t = curl_slist_append(h, "Content-Type: application/json")) != NULL)
		h = t;
	if (t && (t = curl_slist_append(h, "Expect:")) != NULL)
		h = t;
	if (t && (t = curl_slist_append(h, req->authorization)) != NULL)
		h = t;
	*headers = h;
	if (t == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));

	curl_easy_setopt(easy, CURLOPT_URL, req->url);
	if (strcmp(req->method, "POST") == 0)
	{
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body);
	}
	else
		curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);

	if (req->ca_cert != NULL)
	{
		blob.data = unconstify(char *, req->ca_cert);
		blob.len = req->ca_cert_len;
		blob.flags = CURL_BLOB_COPY;
		curl_easy_setopt(easy, CURLOPT_CAINFO_BLOB, &blob);
	}
	else
		curl_easy_setopt(easy, CURLOPT_CAINFO_BLOB, NULL);

	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) wxpay_connect_timeout);
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) wxpay_request_timeout);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(easy, CURLOPT_HEADERDATA, req);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, req);
#if LIBCURL_VERSION_NUM >= 0x075000
	curl_easy_setopt(easy, CURLOPT_PREREQDATA, req);
#endif
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->errbuf);
}

/*
 * Whether a transfer that ended with rc should be sent again to the backup:
 * there is one, it has not been tried, nothing was sent, and the failure is
 * about reaching the host, not about what the host presented.
 */
static bool
FailoverWanted(CURL *easy, WxpayHttpRequest *req, CURLcode rc)
{
	if (req->backup_url == NULL || req->failed_over)
		return false;
	switch (rc)
	{
		case CURLE_COULDNT_RESOLVE_HOST:
		case CURLE_COULDNT_CONNECT:
		case CURLE_OPERATION_TIMEDOUT:
		case CURLE_SSL_CONNECT_ERROR:
		case CURLE_SEND_ERROR:
		case CURLE_RECV_ERROR:
			break;
		default:
			return false;		/* certificate problems among them */
	}
	return FailedOutcome(easy) == WXPAY_TRANSPORT_NOT_SENT;
}

/*
 * Re-aim a finished (and removed) transfer at req->backup_url.  Headers and
 * body stay as RequestStart() set them; the backup gets what is left of the
 * request timeout.  The caller adds the handle to the multi handle again.
 */
static void
FailoverStart(CURL *easy, WxpayHttpRequest *req, CURLcode rc)
{
	curl_off_t	spent_us = 0;
	long		left_ms;

	if (req->errbuf[0] == '\0')
		strlcpy(req->errbuf, curl_easy_strerror(rc), sizeof(req->errbuf));
	strlcpy(req->primary_errbuf, req->errbuf, sizeof(req->primary_errbuf));
	req->failed_over = true;

	curl_easy_getinfo(easy, CURLINFO_TOTAL_TIME_T, &spent_us);
	left_ms = (long) wxpay_request_timeout - (long) (spent_us / 1000);
	left_ms = Max(left_ms, 1L);

	req->outcome = WXPAY_TRANSPORT_NOT_SENT;
	req->errbuf[0] = '\0';
	req->nsends = 0;
	req->too_large = false;
	req->timed_out = false;
	req->status = 0;
	req->resp_len = 0;
	if (req->resp)
		req->resp[0] = '\0';
	HeadersReset(req);

	curl_easy_setopt(easy, CURLOPT_URL, req->backup_url);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
					 Min((long) wxpay_connect_timeout, left_ms));
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, left_ms);
}

/* Record how a transfer ended. */
static void
RequestFinish(CURL *easy, WxpayHttpRequest *req, CURLcode rc)
{
	if (rc == CURLE_OK)
	{
		req->outcome = WXPAY_TRANSPORT_ANSWERED;
		curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &req->status);
	}
	else if (req->nsends > 1)
	{
		/* PrereqCallback refused to send it again */
		req->outcome = WXPAY_TRANSPORT_FAILED;
		strlcpy(req->errbuf,
				"the connection closed before an answer arrived, and the request is never sent twice",
				sizeof(req->errbuf));
	}
	else
	{
		req->outcome = FailedOutcome(easy);
		req->timed_out = (rc == CURLE_OPERATION_TIMEDOUT);
		if (rc == CURLE_FILESIZE_EXCEEDED)
			req->too_large = true;
		if (req->errbuf[0] == '\0')
			strlcpy(req->errbuf, curl_easy_strerror(rc), sizeof(req->errbuf));
	}
	curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, NULL);
	req->elapsed_us = Max(GetCurrentTimestamp() - req->started, 0);
}

/*
 * Wait for socket activity, libcurl's timer or our latch, then let libcurl
 * act.  Returns false when a cancel or termination request is pending.
 * Never ereports while the WaitEventSet exists except from PostgreSQL
 * itself, and the caller's PG_FINALLY frees CurrentWes in that case.
 */
static bool
WaitOnce(long max_ms)
{
	WaitEvent	events[MAX_SOCKETS + 2];
	long		timeout = TimerMs;
	int			n;
	int			running;
	bool		socket_fired = false;

	if (timeout < 0 || timeout > 1000)
		timeout = 1000;			/* re-ask libcurl at least once a second */
	if (max_ms >= 0 && timeout > max_ms)
		timeout = max_ms;		/* the caller wants to be asked again */
	if (timeout != 0)
	{

#if PG_VERSION_NUM >= 170000
		CurrentWes = CreateWaitEventSet(NULL, NSockets + 2);
#else
		CurrentWes = CreateWaitEventSet(CurrentMemoryContext, NSockets + 2);
#endif
		AddWaitEventToSet(CurrentWes, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
		AddWaitEventToSet(CurrentWes, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
		for (int i = 0; i < NSockets; i++)
		{
			uint32		ev = 0;

			if (Sockets[i].what & CURL_POLL_IN)
				ev |= WL_SOCKET_READABLE;
			if (Sockets[i].what & CURL_POLL_OUT)
				ev |= WL_SOCKET_WRITEABLE;
			if (ev != 0)
				AddWaitEventToSet(CurrentWes, ev, Sockets[i].fd, NULL, NULL);
		}
		n = WaitEventSetWait(CurrentWes, timeout, events, lengthof(events),
							 PerformWaitEvent);
		FreeWaitEventSet(CurrentWes);
		CurrentWes = NULL;

		for (int i = 0; i < n; i++)
		{
			if (events[i].events & WL_LATCH_SET)
				ResetLatch(MyLatch);
			else if (events[i].events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
			{
				int			flags = 0;

				if (events[i].events & WL_SOCKET_READABLE)
					flags |= CURL_CSELECT_IN;
				if (events[i].events & WL_SOCKET_WRITEABLE)
					flags |= CURL_CSELECT_OUT;
				curl_multi_socket_action(Multi, events[i].fd, flags, &running);
				socket_fired = true;
			}
		}
	}

	if (QueryCancelPending || ProcDiePending)
		return false;

	/* run libcurl's expired timers (a no-op when none is due) */
	if (!socket_fired || TimerMs == 0)
		curl_multi_socket_action(Multi, CURL_SOCKET_TIMEOUT, 0, &running);
	return true;
}

/*
 * The transfer loop: keep up to NSlots transfers in flight, taking requests
 * from next() until it returns NULL and handing each finished one to done()
 * (if any), until all are done.  Returns false when interrupted.  next()
 * and done() may ereport: the caller's PG_FINALLY detaches what is in
 * flight.
 *
 * With poll instead of next (wxpay_http_perform_poll), NULL means "nothing
 * now": poll is asked again after every finished transfer, after any wakeup
 * (a socket, the latch, libcurl's timer) and at the latest after the delay
 * it named; the loop ends once poll has nothing and nothing is in flight.
 */
static bool
PerformLoop(WxpayHttpNext next, WxpayHttpPoll poll, WxpayHttpDone done,
			void *arg)
{
	bool		exhausted = false;
	int			active = 0;

	for (;;)
	{
		CURLMsg    *msg;
		int			left;
		long		poll_ms = -1;
		bool		nothing_now = false;
		bool		finished_some = false;

		/* fill free slots */
		for (int i = 0; i < NSlots && !exhausted; i++)
		{
			WxpayHttpRequest *req;
			CURLMcode	mc;

			if (SlotRequest[i] != NULL)
				continue;
			req = poll != NULL ? poll(arg, &poll_ms) :
				next != NULL ? next(arg) : NULL;
			if (req == NULL)
			{
				if (poll)
					nothing_now = true;
				else
					exhausted = true;
				break;
			}
			RequestStart(Easy[i], req, &SlotHeaders[i]);
			mc = curl_multi_add_handle(Multi, Easy[i]);
			if (mc != CURLM_OK)
				ereport(ERROR,
						(errcode(ERRCODE_INTERNAL_ERROR),
						 errmsg("could not start an HTTPS request"),
						 errdetail_internal("libcurl: %s", curl_multi_strerror(mc))));
			SlotRequest[i] = req;
			active++;
		}

		/* collect finished transfers */
		while ((msg = curl_multi_info_read(Multi, &left)) != NULL)
		{
			CURLcode	rc;

			if (msg->msg != CURLMSG_DONE)
				continue;
			rc = msg->data.result;
			for (int i = 0; i < NSlots; i++)
			{
				WxpayHttpRequest *req = SlotRequest[i];

				if (Easy[i] != msg->easy_handle || req == NULL)
					continue;
				if (FailoverWanted(Easy[i], SlotRequest[i], rc))
				{
					CURLMcode	mc;

					curl_multi_remove_handle(Multi, Easy[i]);
					FailoverStart(Easy[i], SlotRequest[i], rc);
					mc = curl_multi_add_handle(Multi, Easy[i]);
					if (mc != CURLM_OK)
						ereport(ERROR,
								(errcode(ERRCODE_INTERNAL_ERROR),
								 errmsg("could not start an HTTPS request"),
								 errdetail_internal("libcurl: %s", curl_multi_strerror(mc))));
					break;
				}
				RequestFinish(Easy[i], SlotRequest[i], rc);
				curl_multi_remove_handle(Multi, Easy[i]);
				curl_slist_free_all(SlotHeaders[i]);
				SlotHeaders[i] = NULL;
				SlotRequest[i] = NULL;
				active--;
				finished_some = true;
				if (done != NULL)
					done(req, arg);
				break;
			}
		}

		/* a polling caller hears about every finished transfer at once */
		if (poll && finished_some)
			continue;
		if (active == 0 && (exhausted || nothing_now))
			return true;
		if (active > 0 && !WaitOnce(poll ? poll_ms : -1))
			return false;
	}
}

static WxpayHttpRequest *
ArrayNext(void *arg)
{
	ArraySource *src = (ArraySource *) arg;

	return src->next < src->nreqs ? src->reqs[src->next++] : NULL;
}

/*
 * Perform the requests, at most concurrency at a time, over kept-alive
 * connections.  Each request's outcome is recorded in it; transport
 * failures are not errors here.  A cancel or statement_timeout detaches
 * every transfer and raises PostgreSQL's error.
 */
void
wxpay_http_perform(WxpayHttpRequest **reqs, int nreqs, int concurrency)
{
	ArraySource src;

	CHECK_FOR_INTERRUPTS();
	if (nreqs <= 0)
		return;
	for (int i = 0; i < nreqs; i++)
	{
		reqs[i]->outcome = WXPAY_TRANSPORT_NOT_SENT;
		strlcpy(reqs[i]->errbuf, "the request was not started", sizeof(reqs[i]->errbuf));
		reqs[i]->elapsed_us = -1;
	}
	src.reqs = reqs;
	src.nreqs = nreqs;
	src.next = 0;
	PerformWaitEvent = wxpay_wait_event(WXPAY_WAIT_ANSWER);
	PerformRun(Min(concurrency, nreqs), ArrayNext, NULL, NULL, &src);
}

/*
 * The same for a stream of requests: next() supplies the next request (or
 * NULL when there are no more) as soon as a slot is free, and done() gets
 * each request as it finishes, in completion order.  Requests are started
 * lazily, so the caller needs memory for at most concurrency of them at a
 * time.  done() is not called for requests a cancel interrupted.  (The
 * stream is wxpay_stop_sign_plans'; its waits show as WxpayBatch.)
 */
void
wxpay_http_perform_stream(int concurrency, WxpayHttpNext next,
						  WxpayHttpDone done, void *arg)
{
	CHECK_FOR_INTERRUPTS();
	PerformWaitEvent = wxpay_wait_event(WXPAY_WAIT_BATCH);
	PerformRun(concurrency, next, NULL, done, arg);
}

/*
 * A stream that may pause: poll() returns the next request, or NULL when it
 * has nothing at the moment (and may set *retry_ms to when to ask again;
 * it is also asked after every finished transfer and every wakeup).  Ends
 * when poll() has nothing and no transfer is in flight.  For the queue
 * worker's pipeline, which keeps sending while new work becomes due.
 */
void
wxpay_http_perform_poll(int concurrency, WxpayHttpPoll poll,
						WxpayHttpDone done, void *arg)
{
	CHECK_FOR_INTERRUPTS();
	PerformWaitEvent = wxpay_wait_event(WXPAY_WAIT_ANSWER);
	PerformRun(concurrency, NULL, poll, done, arg);
}

/* Set up the slots, run the loop, and clean up whatever happens. */
static void
PerformRun(int concurrency, WxpayHttpNext next, WxpayHttpPoll poll,
		   WxpayHttpDone done, void *arg)
{
	volatile bool completed = false;

	NSlots = Max(1, Min(concurrency, MAX_EASY));
	for (int i = 0; i < NSlots; i++)
	{
		(void) EasyGet(i);
		SlotHeaders[i] = NULL;
		SlotRequest[i] = NULL;
	}

	PG_TRY();
	{
		completed = PerformLoop(next, poll, done, arg);
	}
	PG_FINALLY();
	{
		if (CurrentWes != NULL)
		{
			FreeWaitEventSet(CurrentWes);
			CurrentWes = NULL;
		}
		for (int i = 0; i < NSlots; i++)
		{
			if (SlotRequest[i] != NULL)
			{
				WxpayHttpRequest *req = SlotRequest[i];

				req->outcome = FailedOutcome(Easy[i]);
				strlcpy(req->errbuf, "the request was canceled", sizeof(req->errbuf));
				curl_easy_setopt(Easy[i], CURLOPT_ERRORBUFFER, NULL);
				curl_multi_remove_handle(Multi, Easy[i]);
				curl_easy_setopt(Easy[i], CURLOPT_HTTPHEADER, NULL);
				SlotRequest[i] = NULL;
			}
			if (SlotHeaders[i] != NULL)
			{
				curl_slist_free_all(SlotHeaders[i]);
				SlotHeaders[i] = NULL;
			}
		}
		NSockets = 0;
		TimerMs = -1;
	}
	PG_END_TRY();

	/* raises 57014 (or FATAL for a termination request) */
	if (!completed)
		CHECK_FOR_INTERRUPTS();
}
