/*-------------------------------------------------------------------------
 *
 * namehash.h
 *	  A backend-local hash table keyed by a short name, made on first use:
 *	  the worker's per-merchant rate windows (ratelimit.c) and per-config
 *	  certificate schedules (pipeline.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef WXPAY_NAMEHASH_H
#define WXPAY_NAMEHASH_H

#include "utils/hsearch.h"

/*
 * The entry for name in *tab (created in TopMemoryContext when NULL, keys
 * of keysize bytes, names longer than that cut), entered if absent;
 * *found tells which.
 */
static inline void *
wxpay_name_entry(HTAB **tab, const char *tabname, const char *name,
				 Size keysize, Size entrysize, bool *found)
{
	if (*tab == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = keysize;
		ctl.entrysize = entrysize;
		*tab = hash_create(tabname, 16, &ctl, HASH_ELEM | HASH_STRINGS);
	}
	/* HASH_STRINGS: hashed, compared and copied up to keysize - 1 bytes */
	return hash_search(*tab, name, HASH_ENTER, found);
}

#endif							/* WXPAY_NAMEHASH_H */
