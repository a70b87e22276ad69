/*-------------------------------------------------------------------------
 *
 * wxpay_signplan.c
 *	  Module entry: _PG_init.
 *
 * _PG_init only hands over to each module's Init, which defines the
 * settings that module reads (and, for the background processes, registers
 * the launcher).  It
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

void		_PG_init(void);

void
_PG_init(void)
{
	TransportInit();
	ConfigInit();
	RootKeyInit();
	CertsInit();
	BatchInit();
	QueueInit();
	PipelineInit();
	RateLimitInit();
	StatsInit();
	WorkerInit();

	MarkGUCPrefixReserved("wxpay");
}
