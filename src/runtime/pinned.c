/*-------------------------------------------------------------------------
 *
 * pinned.c
 *	  The settings the launcher and the queue worker pin, whatever the
 *	  database, its owner or a role set with ALTER DATABASE/ROLE ... SET.
 *
 * Why.  The worker connects as the bootstrap superuser, and
 * BackgroundWorkerInitializeConnection applies pg_db_role_setting like any
 * login: ALTER DATABASE <queue db> SET search_path = evil, pg_catalog, which
 * the database's owner (not a superuser) may run, would make the worker
 * resolve "=" or now() to her functions and run them as superuser; a
 * default_transaction_read_only, a statement_timeout of 1 ms or an
 * exit_on_error would stop the queue.  So every setting that changes what
 * the worker's SQL means, whether it runs, or how it reads and writes text
 * is set here, once, right after connecting, with source PGC_S_OVERRIDE:
 * database and role settings (PGC_S_DATABASE, PGC_S_USER,
 * PGC_S_DATABASE_USER) rank below it, so no ALTER ... SET can undo a pin;
 * the postgresql.conf values of the same settings do not reach these
 * processes either (they need none of them).
 *
 * The extension's own user-settable settings (wxpay.connect_timeout,
 * wxpay.request_timeout, wxpay.batch_concurrency) keep following
 * postgresql.conf and reloads: they cannot be pinned to a fixed value.
 * Instead their check hook (wxpay_pinned_check_hook) refuses, in these
 * processes only, a value that comes from a database or role setting; the
 * server logs a WARNING and the value from postgresql.conf stays.
 *
 * Deliberately not pinned: settings only a superuser (or a role a superuser
 * granted SET on them) can set for a database or role (log_statement,
 * log_min_messages, debug_print_*, lc_messages, ...): such a role is trusted
 * by that grant, and what these processes would log carries no secret
 * anyway (keys are read as query results, never written into a statement's
 * text or parameters); synchronous_commit, which the claim sets to on itself
 * for the one transaction that must be durable (queue.c) and whose server
 * value otherwise stands; planner and memory settings (enable_*, work_mem):
 * at worst slower, never a different meaning.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "wxpay_signplan.h"

typedef struct PinnedSetting
{
	const char *name;
	const char *value;
} PinnedSetting;

/*
 * The pinned settings.  Each comment says what a database owner could do
 * with the setting if it were not pinned.
 */
static const PinnedSetting Pinned[] = {
	/* run her "=" and now() as superuser: pg_catalog only, pg_temp last */
	{"search_path", "pg_catalog, pg_temp"},
	/* ALTER DATABASE SET role = ...: the worker would act as her role */
	{"role", "none"},
	/* every write refused: the queue stops */
	{"default_transaction_read_only", "off"},
	/* the claim and the record rely on READ COMMITTED's row locking */
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_deferrable", "off"},
	/* cut every statement or wait short: the queue stops */
	{"statement_timeout", "0"},
	{"lock_timeout", "0"},
	{"idle_in_transaction_session_timeout", "0"},
	{"idle_session_timeout", "0"},
#if PG_VERSION_NUM >= 170000
	{"transaction_timeout", "0"},
#endif
	/* each caught error would end the worker: a crash loop */
	{"exit_on_error", "off"},
	/* dates, times and intervals the worker writes or parses as text */
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"lc_numeric", "C"},
	{"lc_time", "C"},
	{"lc_monetary", "C"},
	/* how literals and values read and print */
	{"extra_float_digits", "1"},
	{"bytea_output", "hex"},
	{"standard_conforming_strings", "on"},
	{"backslash_quote", "safe_encoding"},
	{"array_nulls", "on"},
	{"transform_null_equals", "off"},
	{"quote_all_identifiers", "off"},
	/* replica: the config triggers (cache invalidation) would not fire */
	{"session_replication_role", "origin"},
	/* superuser bypasses row security anyway; "on" says so */
	{"row_security", "on"},
	{"check_function_bodies", "on"},
#if PG_VERSION_NUM >= 160000
	{"debug_parallel_query", "off"},
#else
	{"force_parallel_mode", "off"},
#endif
};

/* set before connecting: this process is the launcher or the worker */
static bool InBackgroundProcess = false;

/*
 * Before BackgroundWorkerInitializeConnection: from now on the check hook
 * refuses database and role values of the extension's own settings.
 */
void
wxpay_pinned_prepare(void)
{
	InBackgroundProcess = true;
}

/*
 * Right after BackgroundWorkerInitializeConnection (in no transaction):
 * every pinned setting, at a priority no database or role setting reaches.
 *
 * First who the process is.  A client backend's login pins
 * session_authorization itself, but a background worker connected without
 * a user name (the bootstrap superuser) does not: ALTER DATABASE ... SET
 * session_authorization = her role made the worker's session hers.  Its
 * check looks the name up, so this one is set in a transaction.
 */
void
wxpay_pinned_apply(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SetConfigOption("session_authorization",
					GetUserNameFromId(GetAuthenticatedUserId(), false),
					PGC_SUSET, PGC_S_OVERRIDE);
	CommitTransactionCommand();

	for (size_t i = 0; i < lengthof(Pinned); i++)
	{
		const PinnedSetting *p = &Pinned[i];
		const char *now;

		/* a setting this server does not have, nobody can set either */
		if (GetConfigOption(p->name, true, false) == NULL)
			continue;
		if (set_config_option(p->name, p->value, PGC_SUSET, PGC_S_OVERRIDE,
							  GUC_ACTION_SET, true, DEBUG1, false) > 0)
			continue;
		/* refused: harmless only where a server fixes it at that value */
		now = GetConfigOption(p->name, true, false);
		if (now == NULL || strcmp(now, p->value) != 0)
			elog(ERROR, "could not pin setting \"%s\" to \"%s\"",
				 p->name, p->value);
	}
}

/*
 * The check hook of the extension's user-settable settings: in the launcher
 * and the worker, a value from ALTER DATABASE/ROLE ... SET is refused (the
 * server reports it as a WARNING and keeps the value it had).
 */
bool
wxpay_pinned_check_hook(int *newval, void **extra, GucSource source)
{
	(void) newval;
	(void) extra;
	if (InBackgroundProcess &&
		(source == PGC_S_DATABASE || source == PGC_S_USER ||
		 source == PGC_S_DATABASE_USER))
	{
		GUC_check_errdetail("The wxpay_signplan background processes ignore database and role settings.");
		return false;
	}
	return true;
}
