/*-------------------------------------------------------------------------
 *
 * spi.c
 *	  The one error for an SPI call that failed.
 *
 * The extension's SQL runs through SPI in every layer above this one
 * (config, certificates, the check, the queue).  A failure there is a bug
 * or a broken installation, never the user's input: an internal error
 * naming the call and SPI's result code, alike everywhere.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "executor/spi.h"

#include "wxpay_signplan.h"

/*
 * An SPI call that failed where it cannot fail but for a bug or a broken
 * installation: an internal error naming the call and SPI's result code.
 */
void
wxpay_spi_error(const char *call, int rc)
{
	elog(ERROR, "%s failed: %s", call, SPI_result_code_string(rc));
	pg_unreachable();
}
