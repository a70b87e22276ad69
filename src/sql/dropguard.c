/*-------------------------------------------------------------------------
 *
 * dropguard.c
 *	  wxpay_drop_guard(): the event trigger that refuses to drop the
 *	  extension while stop requests are still to be sent.
 *
 * A queued stop is a promise to a customer, and a request in "sending" may
 * already have stopped its plan (its outcome is unknown until the worker
 * settles it).  DROP EXTENSION would discard both without a word, so the
 * extension's event trigger (ddl_command_start, created by the install
 * script) refuses every command that would drop the extension while
 * wxpay_stop_request holds such rows: DROP EXTENSION wxpay_signplan, DROP
 * SCHEMA ... CASCADE of its schema, DROP OWNED BY its owner.  The error
 * counts them and says how to drain or delete them deliberately.
 *
 * Why an event trigger and not the ProcessUtility hook: the hook exists only
 * in backends that loaded the library, which without
 * shared_preload_libraries is not every backend, while rows may remain from
 * a time when the library was preloaded.  An event trigger fires in every
 * session and loads the library itself.  It does not fire where event
 * triggers are off (single-user mode, event_triggers = off on 17 and later,
 * ALTER EVENT TRIGGER ... DISABLE): those are a superuser's deliberate
 * choices.
 *
 * Race-free.  The guard takes the queue table's ACCESS EXCLUSIVE lock (the
 * one the drop takes anyway) before it counts, with the latest snapshot:
 * no enqueue or claim can commit between the count and the drop.
 *
 * Whose rights.  The guard acts only for a user PostgreSQL will let drop
 * the extension (its owner's privileges, or the schema owner's for DROP
 * SCHEMA ... CASCADE): anyone else gets PostgreSQL's own permission error,
 * learns nothing about the queue and never holds its lock.  It then counts
 * the protected queue as the extension owner (a security-restricted switch
 * of the current user, not SECURITY DEFINER, so that the check above sees
 * who really runs the statement).  The search_path is pinned and its SQL
 * names every object and operator with its schema.
 *
 * A drop that goes ahead wakes the worker at commit, so that it notices at
 * once and stops serving the database (worker.c).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/event_trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "wxpay_signplan.h"

#define GUARD_EXTENSION	"wxpay_signplan"

static bool GuardMayConcern(Node *parsetree);
static bool GuardDropsExtension(Node *parsetree, Oid *nspoid, Oid *owner);
static bool GuardMayDrop(Oid owner);
static void GuardCheckQueue(Oid nspoid, Oid owner);

PG_FUNCTION_INFO_V1(wxpay_drop_guard);
Datum
wxpay_drop_guard(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	Oid			nspoid;
	Oid			owner;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("wxpay_drop_guard() must be called as an event trigger")));
	trigdata = (EventTriggerData *) fcinfo->context;
	if (!GuardMayConcern(trigdata->parsetree))
		PG_RETURN_VOID();

	wxpay_spi_connect();
	if (GuardDropsExtension(trigdata->parsetree, &nspoid, &owner))
	{
		GuardCheckQueue(nspoid, owner);
		/* the worker notices the drop at once, not at its next due time */
		wxpay_worker_wake_at_commit(WXPAY_WAKE_QUEUE);
	}
	SPI_finish();
	PG_RETURN_VOID();
}

/*
 * Whether the statement may drop this extension at all, from its parse tree
 * alone: any other DROP EXTENSION, DROP SCHEMA without CASCADE (the
 * extension's objects make it fail anyway) cost no catalog look-up.
 */
static bool
GuardMayConcern(Node *parsetree)
{
	ListCell   *lc;

	if (IsA(parsetree, DropStmt))
	{
		DropStmt   *stmt = (DropStmt *) parsetree;

		if (stmt->removeType == OBJECT_EXTENSION)
		{
			foreach(lc, stmt->objects)
				if (strcmp(strVal(lfirst(lc)), GUARD_EXTENSION) == 0)
					return true;
			return false;
		}
		return stmt->removeType == OBJECT_SCHEMA &&
			stmt->behavior == DROP_CASCADE;
	}
	return IsA(parsetree, DropOwnedStmt);
}

/*
 * Whether the statement drops this extension (when it succeeds); its schema
 * in *nspoid and its owner in *extowner.
 */
static bool
GuardDropsExtension(Node *parsetree, Oid *nspoid, Oid *extowner)
{
	bool		named;
	bool		isnull;
	Oid			owner;
	Oid			nspowner;
	char	   *nspname;
	ListCell   *lc;

	/* GuardMayConcern: a DROP EXTENSION here names it */
	named = IsA(parsetree, DropStmt) &&
		((DropStmt *) parsetree)->removeType == OBJECT_EXTENSION;

	if (SPI_execute("SELECT e.extnamespace, e.extowner, n.nspname, n.nspowner"
					" FROM pg_catalog.pg_extension e"
					" JOIN pg_catalog.pg_namespace n"
					"  ON n.oid OPERATOR(pg_catalog.=) e.extnamespace"
					" WHERE e.extname OPERATOR(pg_catalog.=) '" GUARD_EXTENSION "'",
					false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not look up the " GUARD_EXTENSION " extension");
	if (SPI_processed == 0)
		return false;			/* DROP EXTENSION IF EXISTS of a dropped one */
	*nspoid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1, &isnull));
	owner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull));
	nspname = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 3);
	nspowner = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 4, &isnull));
	*extowner = owner;

	/*
	 * Only for those whom PostgreSQL lets drop it: anyone else gets its
	 * permission error, learns nothing of the queue and never holds its lock.
	 */
	if (named)
		return GuardMayDrop(owner);

	if (IsA(parsetree, DropStmt))
	{
		DropStmt   *stmt = (DropStmt *) parsetree;

		/* DROP SCHEMA ... CASCADE (GuardMayConcern) */
		foreach(lc, stmt->objects)
			if (strcmp(strVal(lfirst(lc)), nspname) == 0)
				return GuardMayDrop(nspowner);
		return false;
	}

	if (IsA(parsetree, DropOwnedStmt))
	{
		foreach(lc, ((DropOwnedStmt *) parsetree)->roles)
		{
			RoleSpec   *rs = (RoleSpec *) lfirst(lc);

			if (get_rolespec_oid(rs, true) == owner)
				return GuardMayDrop(owner);
		}
		return false;
	}
	return false;
}

/* Whether the user running the statement has the privileges of owner. */
static bool
GuardMayDrop(Oid owner)
{
	Oid			user = GetUserId();

	return superuser_arg(user) || has_privs_of_role(user, owner);
}

/*
 * Refuse the drop while the queue holds requests that are still to be sent
 * or whose outcome is not known.
 */
static void
GuardCheckQueue(Oid nspoid, Oid owner)
{
	Oid			save_user;
	int			save_sec;
	Oid			relid;
	char	   *q;
	char	   *sql;
	SPIPlanPtr	plan;
	bool		isnull;
	int64		nqueued;
	int64		nsending;

	relid = get_relname_relid("wxpay_stop_request", nspoid);
	if (!OidIsValid(relid))
		return;
	q = psprintf("%s.wxpay_stop_request", wxpay_schema_quoted(nspoid));

	/* no enqueue or claim can commit between the count and the drop */
	LockRelationOid(relid, AccessExclusiveLock);

	sql = psprintf("SELECT"
				   " pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'queued'),"
				   " pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'sending')"
				   " FROM %s", q);
	/* the queue is the extension owner's: read it as the owner */
	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	plan = SPI_prepare(sql, 0, NULL);
	if (plan == NULL)
		wxpay_spi_error("SPI_prepare", SPI_result);
	if (SPI_execute_snapshot(plan, NULL, NULL, GetLatestSnapshot(),
							 InvalidSnapshot, true, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not count the requests in %s", q);
	nqueued = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										  SPI_tuptable->tupdesc, 1, &isnull));
	nsending = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0],
										   SPI_tuptable->tupdesc, 2, &isnull));
	SetUserIdAndSecContext(save_user, save_sec);
	if (nqueued == 0 && nsending == 0)
		return;

	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("cannot drop extension %s while stop requests are pending",
					GUARD_EXTENSION),
			 errdetail("Table %s holds %lld queued requests and %lld requests in state \"sending\" (sent or about to be sent, outcome not yet known). Dropping the extension would discard them.",
					   q, (long long) nqueued, (long long) nsending),
			 errhint("Let the worker finish them (wxpay_wait_stop_request(id) waits for one), or delete them deliberately: DELETE FROM %s WHERE state IN ('queued', 'sending'). A deleted \"sending\" request may already have stopped its plan: check those plans with wxpay_query_sign_plan.",
					 q)));
}
