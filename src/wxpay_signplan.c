/*-------------------------------------------------------------------------
 *
 * wxpay_signplan.c
 *	  Module entry: _PG_init and the settings.
 *
 * _PG_init only defines settings and hands over to each module's Init.  It
 * runs in the postmaster when the library is preloaded and in a backend on
 * first use otherwise; nothing here may depend on being in a transaction.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "wxpay_signplan.h"

PG_MODULE_MAGIC;

/* GUC variables */
int			wxpay_connect_timeout = 10000;
int			wxpay_request_timeout = 30000;
int			wxpay_certificate_refresh_interval = 12 * 3600;
int			wxpay_batch_concurrency = 8;

void		_PG_init(void);

void
_PG_init(void)
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

	DefineCustomIntVariable("wxpay.certificate_refresh_interval",
							"Sets how often the background worker downloads the WeChat Pay platform certificates.",
							"Applies to each configuration with an apiv3_key; 0 turns the automatic refresh off. A failed refresh keeps the certificates already held.",
							&wxpay_certificate_refresh_interval,
							12 * 3600, 0, 7 * 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomIntVariable("wxpay.batch_concurrency",
							"Sets how many requests wxpay_stop_sign_plans keeps in flight at once.",
							"Each request in flight uses its own kept-alive connection to WeChat Pay.",
							&wxpay_batch_concurrency,
							8, 1, WXPAY_BATCH_CONCURRENCY_MAX,
							PGC_USERSET,
							0,
							wxpay_pinned_check_hook, NULL, NULL);

	TransportInit();
	ConfigInit();
	RootKeyInit();
	WorkerInit();
	StatsInit();

	MarkGUCPrefixReserved("wxpay");
}
