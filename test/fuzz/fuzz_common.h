/*-------------------------------------------------------------------------
 *
 * fuzz_common.h
 *	  What every fuzz target of test/fuzz/ shares.
 *
 * The targets link src/protocol/protocol.c alone (no server): it includes
 * postgres.h for its types and macros only.  A broken property aborts
 * with a message, which libFuzzer and the replay driver both report as a
 * crash.
 *
 *-------------------------------------------------------------------------
 */
#ifndef WXPAY_FUZZ_COMMON_H
#define WXPAY_FUZZ_COMMON_H

#include "postgres.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "protocol.h"

/* port.h routes these to libpgport's versions; the targets use libc's */
#undef fprintf
#undef printf
#undef snprintf

extern int	LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond) \
	do { \
		if (!(cond)) \
		{ \
			fprintf(stderr, "%s:%d: property broken: %s\n", \
					__FILE__, __LINE__, #cond); \
			abort(); \
		} \
	} while (0)

#endif							/* WXPAY_FUZZ_COMMON_H */
