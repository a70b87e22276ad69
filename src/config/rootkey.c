/*-------------------------------------------------------------------------
 *
 * rootkey.c
 *	  Keys at rest: the root key, sealing wxpay_config's private_key and
 *	  apiv3_key before a row is written, and opening them for the key users.
 *
 * The root key.  wxpay.root_key_command (and, during a rotation,
 * wxpay.previous_root_key_command) is a command that the server runs with
 * /bin/sh to print a 256-bit key as 64 hexadecimal digits.  Both settings
 * are PGC_SIGHUP and GUC_SUPERUSER_ONLY: only the server's configuration
 * sets them, only superusers see them.  Each process runs the command the
 * first time it needs the key, and again whenever the setting's text has
 * changed since (a reload); a failure is not remembered, so the next use
 * runs the command again.  The 32 bytes live in a static buffer of this
 * process only, zeroed when the setting changes and when the process
 * exits; the command's output is zeroed as soon as it is parsed.  No
 * message quotes the command's output, the key or any part of it: errors
 * name a key by its fingerprint (seal.c) only.
 *
 * Running the command.  It is forked and exec'd here (not popen: the
 * process must be killable) with standard input from /dev/null, in a
 * session and process group of its own (setsid), its standard output a
 * non-blocking pipe read in a loop that waits on the process latch together
 * with the pipe (WaitLatchOrSocket, wait event WxpayRootKeyCommand) and
 * checks for interrupts each time round.  A command that has not printed
 * its key, closed its output and exited within
 * wxpay.root_key_command_timeout is killed (SIGKILL to its process group)
 * and reaped, and the key user fails as for any failing command (WX001); a
 * cancel or statement_timeout raises PostgreSQL's own error (57014) after
 * the same kill and reap (PG_CATCH), and a FATAL exit (pg_terminate_backend,
 * the postmaster's death) kills it from the proc_exit hook.  Being in a
 * session of its own, it no longer receives the signals the postmaster
 * sends to a backend's process group; on Linux it is killed when this
 * process dies without running its hooks (an immediate shutdown, a crash:
 * PR_SET_PDEATHSIG), though what it started itself then lives on.  So a
 * command that hangs (a vault that does not answer, a prompt) holds a
 * process for at most the timeout and leaves no process or zombie.  What
 * it printed is kept in a static buffer, zeroed after parsing and on every
 * error; a process runs at most one command at a time.
 *
 * Sealing.  The C row trigger wxpay_config_seal runs BEFORE INSERT OR
 * UPDATE, after the plpgsql wxpay_config_check (triggers fire in name
 * order), so the heap, the WAL, dumps and replicas only ever see the sealed
 * form.  With no root key configured it leaves rows as they are.  A value
 * that already is sealed text is stored as given: that is how pg_dump's
 * COPY restores sealed rows (even where the key is missing), and a sealed
 * value copied by hand from another row or column simply will not open
 * (the associated data bind each value to its config name and column).
 * Renaming a config (UPDATE of name) re-seals its unchanged sealed values
 * under the new name: that needs the root key that sealed them (current or
 * previous), else the UPDATE fails with WX001 and nothing is written.
 *
 * Opening.  config.c opens private_key when it parses a config into its
 * cache (so an opened key is cached exactly as a parsed key always was),
 * certs.c opens apiv3_key for each refresh, checkconfig.c both.  A value
 * sealed under a key the server does not have is WX001 with both
 * fingerprints; wxpay_config_rootkey_failed is then set, so that the queue
 * worker can leave its requests queued (the key may come back with a
 * reload) instead of counting attempts.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#include "access/htup_details.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "port.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "wxpay_signplan.h"

/* GUC variables */
char	   *wxpay_root_key_command = NULL;
char	   *wxpay_previous_root_key_command = NULL;
static int	RootKeyCommandTimeout = 10000;	/* ms */

/* set just before a root-key failure is reported (see the header) */
bool		wxpay_config_rootkey_failed = false;

#define AD_LABEL	"wxpay_signplan wxpay_config v1"
#define ROOTKEY_MAX_OUTPUT	256
#define ROOTKEY_MAX_OUTPUT_BUF	(ROOTKEY_MAX_OUTPUT + 1)
#define ROOTKEY_REAP_PAUSE_MS	100	/* longest pause polling for its exit */

typedef struct RootKeySlot
{
	bool		present;		/* a key is loaded for command */
	char	   *command;		/* TopMemoryContext copy of the setting */
	unsigned char key[WXPAY_ROOT_KEY_LEN];
	char		fp[WXPAY_SEAL_FP_LEN + 1];
} RootKeySlot;

/* local state */
static RootKeySlot CurrentKey;
static RootKeySlot PreviousKey;
static bool ExitHookSet = false;
static uint64 RootKeyGen = 0;	/* bumped when a setting's text changes */

/* the running root key command, at most one (see the header) */
static pid_t ChildPid = 0;		/* 0: none left to reap */
static int	ChildFd = -1;		/* the read end of its standard output */
static char ChildOut[ROOTKEY_MAX_OUTPUT_BUF];	/* what it printed */
static size_t ChildOutLen = 0;
static bool ChildOutTooLong = false;
static bool ChildLatchSeen = false;	/* the latch was set while it ran */

static void RootKeyAssign(const char *newval, void *extra);
static void RootKeyAssignPrevious(const char *newval, void *extra);
static void RootKeyForget(RootKeySlot *slot);
static void RootKeyAtExit(int code, Datum arg);
static const RootKeySlot *RootKeyLoad(RootKeySlot *slot, const char *command,
									  const char *setting, char **why);
static char *RootKeyRun(const char *command, const char *setting);
static char *RootKeyStart(const char *command, const char *setting);
static char *RootKeyCollect(const char *setting, int timeout_ms,
							uint32 wait_event);
static void RootKeyStop(void);
static const RootKeySlot *RootKeyCurrent(void);
static char *RootKeyAad(const char *name, const char *column, size_t *len);
static char *RootKeyTryOpen(const char *name, const char *column,
							const char *stored, char **detail, char **hint,
							bool *rootkey);
static int	RootKeyHexValue(char c);
static void RootKeySecretFree(char *s);
static char *RootKeySealWith(const RootKeySlot *slot, const char *name,
							 const char *column, const char *plain);

PG_FUNCTION_INFO_V1(wxpay_config_seal);
PG_FUNCTION_INFO_V1(wxpay_seal_config);

void
RootKeyInit(void)
{
	DefineCustomStringVariable("wxpay.root_key_command",
							   "Sets the command that prints the root key sealing the keys stored in wxpay_config.",
							   "The command must print 64 hexadecimal digits (256 bits). Empty: keys are stored as given.",
							   &wxpay_root_key_command,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, RootKeyAssign, NULL);
	DefineCustomStringVariable("wxpay.previous_root_key_command",
							   "Sets the command that prints the previous root key, during a rotation.",
							   "Values sealed under it are opened, and re-sealed under the root key by wxpay_seal_config().",
							   &wxpay_previous_root_key_command,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, RootKeyAssignPrevious, NULL);
	DefineCustomIntVariable("wxpay.root_key_command_timeout",
							"Sets the longest time the root key command may take.",
							"A command that has not printed the key and exited by then is killed, and the key user fails with WX001.",
							&RootKeyCommandTimeout,
							10000, 100, 3600 * 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/*
 * A changed setting (a reload): keys opened under the old root key are to
 * be opened again, so that a process with a cached key behaves as a new
 * one would.  The variable still holds the old value here.
 */
static void
RootKeyAssign(const char *newval, void *extra)
{
	(void) extra;
	if (strcmp(newval ? newval : "", wxpay_root_key_command ? wxpay_root_key_command : "") != 0)
		RootKeyGen++;
}

static void
RootKeyAssignPrevious(const char *newval, void *extra)
{
	(void) extra;
	if (strcmp(newval ? newval : "",
			   wxpay_previous_root_key_command ? wxpay_previous_root_key_command : "") != 0)
		RootKeyGen++;
}

/* Changes when a root key setting changes: caches of opened keys compare. */
uint64
wxpay_rootkey_generation(void)
{
	return RootKeyGen;
}

static void
RootKeyForget(RootKeySlot *slot)
{
	explicit_bzero(slot->key, sizeof(slot->key));
	slot->present = false;
	slot->fp[0] = '\0';
	if (slot->command)
		pfree(slot->command);
	slot->command = NULL;
}

static void
RootKeyAtExit(int code, Datum arg)
{
	(void) code;
	(void) arg;
	RootKeyStop();				/* a command still running: a FATAL exit */
	explicit_bzero(ChildOut, sizeof(ChildOut));
	explicit_bzero(CurrentKey.key, sizeof(CurrentKey.key));
	explicit_bzero(PreviousKey.key, sizeof(PreviousKey.key));
}

/*
 * The key the command prints, run when the slot does not hold the key of
 * this very command text.  NULL with *why NULL when no command is set;
 * NULL with *why (a complete sentence) when it failed.
 */
static const RootKeySlot *
RootKeyLoad(RootKeySlot *slot, const char *command, const char *setting,
			char **why)
{
	char	   *buf = ChildOut;
	size_t		n;

	*why = NULL;
	if (command == NULL || command[0] == '\0')
	{
		if (slot->command != NULL)
			RootKeyForget(slot);
		return NULL;
	}
	if (slot->present && strcmp(slot->command, command) == 0)
		return slot;
	RootKeyForget(slot);

	if (!ExitHookSet)
	{
		on_proc_exit(RootKeyAtExit, (Datum) 0);
		ExitHookSet = true;
	}

	*why = RootKeyRun(command, setting);
	if (*why != NULL)
	{
		explicit_bzero(ChildOut, sizeof(ChildOut));
		return NULL;
	}
	n = ChildOutLen;
	buf[n] = '\0';

	/* 64 hex digits, then only white space (a trailing newline) */
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' ||
					 buf[n - 1] == ' ' || buf[n - 1] == '\t'))
		n--;
	if (ChildOutTooLong || n != 2 * WXPAY_ROOT_KEY_LEN || !wxpay_is_hex(buf, n))
	{
		explicit_bzero(ChildOut, sizeof(ChildOut));
		*why = psprintf("The command of %s printed something other than %d hexadecimal digits.",
						setting, 2 * WXPAY_ROOT_KEY_LEN);
		return NULL;
	}
	for (int i = 0; i < WXPAY_ROOT_KEY_LEN; i++)
	{
		int			hi = RootKeyHexValue(buf[2 * i]);
		int			lo = RootKeyHexValue(buf[2 * i + 1]);

		slot->key[i] = (unsigned char) (hi * 16 + lo);
	}
	explicit_bzero(ChildOut, sizeof(ChildOut));
	wxpay_seal_fingerprint(slot->key, slot->fp);
	slot->command = MemoryContextStrdup(TopMemoryContext, command);
	slot->present = true;
	return slot;
}

/*
 * Run command and collect its output into ChildOut (ChildOutLen,
 * ChildOutTooLong): NULL when it printed and exited 0 within the timeout,
 * else why not (a complete sentence), the command killed and reaped.  The
 * caller zeroes ChildOut.  Interrupts are served (57014 and the like,
 * after the command was killed, reaped and ChildOut zeroed).
 */
static char *
RootKeyRun(const char *command, const char *setting)
{
	uint32		wait_event = wxpay_wait_event(WXPAY_WAIT_ROOT_KEY);
	int			timeout_ms = RootKeyCommandTimeout;
	char	   *volatile why;

	ChildOutLen = 0;
	ChildOutTooLong = false;
	ChildLatchSeen = false;
	why = RootKeyStart(command, setting);
	if (why != NULL)
		return why;
	PG_TRY();
	{
		why = RootKeyCollect(setting, timeout_ms, wait_event);
	}
	PG_CATCH();
	{
		RootKeyStop();
		explicit_bzero(ChildOut, sizeof(ChildOut));
		PG_RE_THROW();
	}
	PG_END_TRY();
	RootKeyStop();				/* after a timeout: kill it; else a no-op */

	/* a wakeup meant for the caller's own wait loop is not lost */
	if (ChildLatchSeen)
		SetLatch(MyLatch);
	return why;
}

/*
 * Fork and exec command with /bin/sh, in a session of its own, reading
 * /dev/null, printing into a non-blocking pipe (ChildFd).  NULL on success,
 * else why it could not be started.  Throws nothing once it has forked.
 */
static char *
RootKeyStart(const char *command, const char *setting)
{
	static const int dfl_signals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM,
		SIGALRM, SIGPIPE, SIGUSR1, SIGUSR2, SIGCHLD, SIGURG};
	struct sigaction dfl;
	sigset_t	all;
	sigset_t	none;
	sigset_t	saved;
	int			fds[2];
	int			devnull;
	pid_t		pid;
	pid_t		parent = getpid();
	int			save_errno;

	Assert(ChildPid == 0 && ChildFd < 0);
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	sigfillset(&all);
	sigemptyset(&none);

	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (devnull < 0)
	{
		save_errno = errno;
		return psprintf("The command of %s could not be started: %s.",
						setting, strerror(save_errno));
	}
	if (pipe(fds) != 0)
	{
		save_errno = errno;
		close(devnull);
		return psprintf("The command of %s could not be started: %s.",
						setting, strerror(save_errno));
	}
	if (fcntl(fds[0], F_SETFD, FD_CLOEXEC) < 0 ||
		fcntl(fds[1], F_SETFD, FD_CLOEXEC) < 0 ||
		fcntl(fds[0], F_SETFL, O_NONBLOCK) < 0)
	{
		save_errno = errno;
		close(devnull);
		close(fds[0]);
		close(fds[1]);
		return psprintf("The command of %s could not be started: %s.",
						setting, strerror(save_errno));
	}

	/*
	 * No signal handler of this process may run in the child before exec:
	 * block them all around fork, and in the child reset the dispositions
	 * exec would keep (ignored ones) and the mask.  Only async-signal-safe
	 * calls between fork and exec.
	 */
	fflush(NULL);
	sigprocmask(SIG_SETMASK, &all, &saved);
	pid = fork();
	if (pid == 0)
	{
		for (int i = 0; i < (int) lengthof(dfl_signals); i++)
			(void) sigaction(dfl_signals[i], &dfl, NULL);
		(void) setsid();
#ifdef __linux__
		/* this process gone (quickdie, SIGKILL): the command with it */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent)
			_exit(127);
#endif
		if (dup2(devnull, STDIN_FILENO) < 0 || dup2(fds[1], STDOUT_FILENO) < 0 ||
			fcntl(STDIN_FILENO, F_SETFD, 0) < 0 ||
			fcntl(STDOUT_FILENO, F_SETFD, 0) < 0)
			_exit(127);
		(void) sigprocmask(SIG_SETMASK, &none, NULL);
		execl("/bin/sh", "sh", "-c", command, (char *) NULL);
		_exit(127);
	}
	save_errno = errno;
	sigprocmask(SIG_SETMASK, &saved, NULL);
	close(devnull);
	close(fds[1]);
	if (pid < 0)
	{
		close(fds[0]);
		return psprintf("The command of %s could not be started: %s.",
						setting, strerror(save_errno));
	}
	ChildPid = pid;
	ChildFd = fds[0];
	return NULL;
}

/*
 * Read the running command's output to its end, then wait for its exit,
 * both within timeout_ms, serving interrupts.  NULL when it exited 0 (it
 * is reaped), else why not (it may still be running: RootKeyStop).
 */
static char *
RootKeyCollect(const char *setting, int timeout_ms, uint32 wait_event)
{
	TimestampTz start = GetCurrentTimestamp();
	int			status = 0;
	long		pause_ms = 1;

	for (;;)
	{
		bool		progress = false;
		long		left;
		int			rc;

		CHECK_FOR_INTERRUPTS();
		if (ChildFd >= 0)
		{
			char		chunk[128];
			ssize_t		got = read(ChildFd, chunk, sizeof(chunk));

			if (got > 0)
			{
				if (!ChildOutTooLong && ChildOutLen + (size_t) got <= ROOTKEY_MAX_OUTPUT)
				{
					memcpy(ChildOut + ChildOutLen, chunk, (size_t) got);
					ChildOutLen += (size_t) got;
				}
				else
					ChildOutTooLong = true;
				explicit_bzero(chunk, sizeof(chunk));
				progress = true;
			}
			else if (got == 0)
			{
				close(ChildFd);
				ChildFd = -1;
				progress = true;
			}
			else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				return psprintf("The output of the command of %s could not be read: %s.",
								setting, strerror(errno));
		}
		else
		{
			pid_t		r = waitpid(ChildPid, &status, WNOHANG);

			if (r == ChildPid)
			{
				ChildPid = 0;
				break;
			}
			if (r < 0 && errno != EINTR)
			{
				int			save_errno = errno;

				if (save_errno == ECHILD)
					ChildPid = 0;	/* gone: nothing to kill or reap */
				return psprintf("The command of %s could not be waited for: %s.",
								setting, strerror(save_errno));
			}
		}

		left = timeout_ms - TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());
		if (left <= 0)
		{
			if (timeout_ms % 1000 == 0)
				return psprintf("The command of %s did not answer within %d s; it was stopped.",
								setting, timeout_ms / 1000);
			return psprintf("The command of %s did not answer within %d ms; it was stopped.",
							setting, timeout_ms);
		}
		if (progress)
			continue;
		if (ChildFd >= 0)
			rc = WaitLatchOrSocket(MyLatch,
								   WL_LATCH_SET | WL_SOCKET_READABLE |
								   WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
								   ChildFd, left, wait_event);
		else
		{
			/* output closed: it is exiting, normally at once */
			rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						   Min(left, pause_ms), wait_event);
			pause_ms = Min(pause_ms * 2, ROOTKEY_REAP_PAUSE_MS);
		}
		if (rc & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			ChildLatchSeen = true;
		}
	}
	if (status != 0)
		return psprintf("The command of %s failed: %s.",
						setting, wait_result_to_str(status));
	return NULL;
}

/*
 * Close the pipe, and kill (its whole process group) and reap a command
 * still running.  Also the proc_exit hook's: throws nothing.
 */
static void
RootKeyStop(void)
{
	if (ChildFd >= 0)
	{
		close(ChildFd);
		ChildFd = -1;
	}
	if (ChildPid > 0)
	{
		pid_t		pid = ChildPid;

		ChildPid = 0;
		(void) kill(-pid, SIGKILL);	/* its group: what it started */
		(void) kill(pid, SIGKILL);	/* itself, had it not reached setsid */
		while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
}

/* The root key, NULL when none is configured; WX001 when it cannot be had. */
static const RootKeySlot *
RootKeyCurrent(void)
{
	char	   *why;
	const RootKeySlot *k = RootKeyLoad(&CurrentKey, wxpay_root_key_command,
									   "wxpay.root_key_command", &why);

	if (k == NULL && why != NULL)
	{
		wxpay_config_rootkey_failed = true;
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("could not obtain the wxpay root key"),
				 errdetail("%s", why),
				 errhint("Make the command print the root key as 64 hexadecimal digits, then reload the server configuration.")));
	}
	return k;
}

/* Is a root key configured (wxpay.root_key_command not empty)? */
bool
wxpay_rootkey_configured(void)
{
	return wxpay_root_key_command != NULL && wxpay_root_key_command[0] != '\0';
}

/* hex digit value; the input was checked by wxpay_is_hex */
static int
RootKeyHexValue(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return c - 'A' + 10;
}

/* Zero a palloc'd copy of secret text, then free it (as config.c does). */
static void
RootKeySecretFree(char *s)
{
	if (s)
	{
		explicit_bzero(s, strlen(s));
		pfree(s);
	}
}

/* The associated data of a value: the format, its config and its column. */
static char *
RootKeyAad(const char *name, const char *column, size_t *len)
{
	size_t		l1 = sizeof(AD_LABEL);
	size_t		l2 = strlen(name) + 1;
	size_t		l3 = strlen(column);
	char	   *ad = palloc(l1 + l2 + l3 + 1);

	memcpy(ad, AD_LABEL, l1);
	memcpy(ad + l1, name, l2);
	memcpy(ad + l1 + l2, column, l3 + 1);
	*len = l1 + l2 + l3;
	return ad;
}

static char *
RootKeySealWith(const RootKeySlot *slot, const char *name, const char *column,
				const char *plain)
{
	size_t		adlen;
	char	   *ad = RootKeyAad(name, column, &adlen);
	WxpayKeyError err;
	char	   *sealed;

	sealed = wxpay_seal(slot->key, ad, adlen, plain, strlen(plain), &err);
	pfree(ad);
	if (sealed == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("could not seal the %s of wxpay configuration \"%s\"", column, name),
				 errdetail_internal("%s%s%s.", err.msg, err.lib[0] ? ": " : "", err.lib)));
	return sealed;
}

/*
 * The plaintext of a stored value (palloc'd; the caller zeroes it with
 * wxpay_secret_free), or NULL with *detail and *hint (complete sentences)
 * and *rootkey (the server lacks the key that sealed it) set.  Plaintext
 * comes back as a copy.  May throw when the root key command fails.
 */
static char *
RootKeyTryOpen(const char *name, const char *column, const char *stored,
			   char **detail, char **hint, bool *rootkey)
{
	char		fp[WXPAY_SEAL_FP_LEN + 1];
	const char *payload;
	const RootKeySlot *k = NULL;
	const RootKeySlot *cur;
	char	   *why;
	char	   *plain;
	size_t		adlen;
	size_t		len;
	char	   *ad;
	WxpayKeyError err;

	*detail = NULL;
	*hint = NULL;
	*rootkey = false;
	if (!wxpay_seal_is_sealed(stored))
		return pstrdup(stored);
	if (!wxpay_seal_parse(stored, fp, &payload))
	{
		*detail = psprintf("The value of %s is not in a sealed format this version knows.", column);
		*hint = psprintf("Store the %s again.", column);
		return NULL;
	}

	/* a failing command is this value's failure, not an error: the check */
	cur = RootKeyLoad(&CurrentKey, wxpay_root_key_command,
					  "wxpay.root_key_command", &why);
	if (cur == NULL && why != NULL)
	{
		*rootkey = true;
		*detail = why;
		*hint = pstrdup("Make the command print the root key as 64 hexadecimal digits, then reload the server configuration.");
		return NULL;
	}
	if (cur != NULL && strcmp(cur->fp, fp) == 0)
		k = cur;
	else
	{
		const RootKeySlot *prev = RootKeyLoad(&PreviousKey,
											  wxpay_previous_root_key_command,
											  "wxpay.previous_root_key_command",
											  &why);

		if (prev == NULL && why != NULL)
		{
			*rootkey = true;
			*detail = why;
			*hint = pstrdup("Make the command print the previous root key as 64 hexadecimal digits, then reload the server configuration.");
			return NULL;
		}
		if (prev != NULL && strcmp(prev->fp, fp) == 0)
			k = prev;
	}
	if (k == NULL)
	{
		*rootkey = true;
		if (cur == NULL)
			*detail = psprintf("The %s was sealed under the root key with fingerprint %s; the server has no root key (wxpay.root_key_command is empty).",
							   column, fp);
		else
			*detail = psprintf("The %s was sealed under the root key with fingerprint %s; the server's root key has fingerprint %s.",
							   column, fp, cur->fp);
		*hint = pstrdup("Set wxpay.root_key_command (or, during a rotation, wxpay.previous_root_key_command) to a command printing the root key that sealed it, and reload; or store the key again.");
		return NULL;
	}

	ad = RootKeyAad(name, column, &adlen);
	plain = wxpay_seal_open(k->key, ad, adlen, payload, &len, &err);
	pfree(ad);
	if (plain == NULL)
	{
		*detail = psprintf("The %s is sealed under the root key with fingerprint %s, which the server has, but it does not open for this configuration and column: it was altered, or copied from another row or column.",
						   column, fp);
		*hint = psprintf("Store the %s of configuration \"%s\" again.", column, name);
		return NULL;
	}
	if (strlen(plain) != len)
	{
		RootKeySecretFree(plain);
		*detail = psprintf("The opened %s contains a NUL byte.", column);
		*hint = psprintf("Store the %s again.", column);
		return NULL;
	}
	return plain;
}

/*
 * The plaintext of the stored value of column of config name, palloc'd (free
 * it with wxpay_secret_free); WX001 when it cannot be opened.
 */
char *
wxpay_config_open_secret(const char *name, const char *column,
						 const char *stored)
{
	char	   *detail;
	char	   *hint;
	bool		rootkey;
	char	   *plain = RootKeyTryOpen(name, column, stored, &detail, &hint, &rootkey);

	if (plain == NULL)
	{
		if (rootkey)
			wxpay_config_rootkey_failed = true;
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("could not open the sealed %s of wxpay configuration \"%s\"", column, name),
				 errdetail("%s", detail),
				 errhint("%s", hint)));
	}
	return plain;
}

/*
 * The same without an error for the value itself: NULL and *why (detail and
 * hint) when it cannot be opened.  For wxpay_check_config.
 */
char *
wxpay_config_try_open_secret(const char *name, const char *column,
							 const char *stored, char **why)
{
	char	   *detail;
	char	   *hint;
	bool		rootkey;
	char	   *plain = RootKeyTryOpen(name, column, stored, &detail, &hint, &rootkey);

	if (plain == NULL)
		*why = psprintf("%s %s", detail, hint);
	return plain;
}

/*
 * wxpay_check_config's keys_at_rest: -1 (NULL: no root key), 0 or 1, and
 * the row's text in *text.  The stored values are given as read.
 */
int
wxpay_config_keys_at_rest(const char *private_key, const char *apiv3_key,
						  char **text)
{
	const char *vals[2] = {private_key, apiv3_key};
	const char *cols[2] = {"private_key", "apiv3_key"};
	const RootKeySlot *cur;
	StringInfoData buf;
	char	   *why;
	bool		ok = true;

	if (!wxpay_rootkey_configured())
	{
		*text = pstrdup("No root key: private_key and apiv3_key are stored as given, and every dump, backup and replica carries them. Set wxpay.root_key_command (doc/security.md, \"Keys at rest\").");
		return -1;
	}
	cur = RootKeyLoad(&CurrentKey, wxpay_root_key_command,
					  "wxpay.root_key_command", &why);
	if (cur == NULL)
	{
		*text = psprintf("The root key cannot be obtained: %s", why ? why : "no command.");
		return 0;
	}
	initStringInfo(&buf);
	for (int i = 0; i < 2; i++)
	{
		char		fp[WXPAY_SEAL_FP_LEN + 1];
		const char *payload;

		if (vals[i] == NULL)
			continue;
		if (!wxpay_seal_is_sealed(vals[i]))
		{
			appendStringInfo(&buf, "%s%s is stored in plaintext.",
							 buf.len ? " " : "", cols[i]);
			ok = false;
		}
		else if (!wxpay_seal_parse(vals[i], fp, &payload))
		{
			appendStringInfo(&buf, "%s%s is in an unknown sealed format.",
							 buf.len ? " " : "", cols[i]);
			ok = false;
		}
		else if (strcmp(fp, cur->fp) != 0)
		{
			appendStringInfo(&buf, "%s%s is sealed under root key %s, not under the server's root key %s.",
							 buf.len ? " " : "", cols[i], fp, cur->fp);
			ok = false;
		}
	}
	if (ok)
		appendStringInfo(&buf, "The keys are sealed under the root key with fingerprint %s.", cur->fp);
	else
		appendStringInfoString(&buf, " Call SELECT wxpay_seal_config() to seal them under the current root key (a value sealed under another key needs that key as wxpay.previous_root_key_command).");
	*text = buf.data;
	return ok ? 1 : 0;
}

/*
 * BEFORE INSERT OR UPDATE row trigger on wxpay_config: seal private_key and
 * apiv3_key (see the header).
 */
Datum
wxpay_config_seal(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	static const char *const cols[2] = {"private_key", "apiv3_key"};
	TupleDesc	desc;
	HeapTuple	newtup;
	HeapTuple	oldtup = NULL;
	int			attnums[2];
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			nchanged = 0;
	int			chattr[2];
	Datum		chval[2];
	bool		chnull[2] = {false, false};
	char	   *name;
	char	   *oldname = NULL;
	int			nameatt;
	bool		isnull;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("wxpay_config_seal() must be called as a BEFORE ROW trigger")));

	desc = RelationGetDescr(trigdata->tg_relation);
	if (TRIGGER_FIRED_BY_UPDATE(trigdata->tg_event))
	{
		newtup = trigdata->tg_newtuple;
		oldtup = trigdata->tg_trigtuple;
	}
	else
		newtup = trigdata->tg_trigtuple;

	nameatt = SPI_fnumber(desc, "name");
	attnums[0] = SPI_fnumber(desc, cols[0]);
	attnums[1] = SPI_fnumber(desc, cols[1]);
	if (nameatt <= 0 || attnums[0] <= 0 || attnums[1] <= 0)
		elog(ERROR, "wxpay_config lacks its name, private_key or apiv3_key column");

	{
		Datum		d = heap_getattr(newtup, nameatt, desc, &isnull);

		if (isnull)
			return PointerGetDatum(newtup);	/* wxpay_config_check refused it */
		name = TextDatumGetCString(d);
	}
	if (oldtup != NULL)
	{
		Datum		d = heap_getattr(oldtup, nameatt, desc, &isnull);

		oldname = isnull ? NULL : TextDatumGetCString(d);
	}

	for (int i = 0; i < 2; i++)
	{
		char	   *val;
		char	   *sealed = NULL;

		values[i] = heap_getattr(newtup, attnums[i], desc, &nulls[i]);
		if (nulls[i])
			continue;
		val = TextDatumGetCString(values[i]);

		if (wxpay_seal_is_sealed(val))
		{
			/* a rename re-seals the unchanged value under the new name */
			if (oldname != NULL && strcmp(oldname, name) != 0)
			{
				bool		oldnull;
				Datum		od = heap_getattr(oldtup, attnums[i], desc, &oldnull);
				char	   *oldval = oldnull ? NULL : TextDatumGetCString(od);

				if (oldval != NULL && strcmp(oldval, val) == 0)
				{
					const RootKeySlot *cur = RootKeyCurrent();
					char	   *plain;

					if (cur == NULL)
					{
						wxpay_config_rootkey_failed = true;
						ereport(ERROR,
								(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
								 errmsg("cannot rename wxpay configuration \"%s\" without a root key", oldname),
								 errdetail("Its %s is sealed, and a sealed value is bound to its configuration's name.", cols[i]),
								 errhint("Set wxpay.root_key_command to the root key that sealed it, reload, and rename it again.")));
					}
					else
					{
						plain = wxpay_config_open_secret(oldname, cols[i], val);
						sealed = RootKeySealWith(cur, name, cols[i], plain);
						RootKeySecretFree(plain);
					}
				}
			}
			pfree(val);
		}
		else
		{
			const RootKeySlot *cur = RootKeyCurrent();

			if (cur != NULL)
				sealed = RootKeySealWith(cur, name, cols[i], val);
			RootKeySecretFree(val);
		}
		if (sealed != NULL)
		{
			chattr[nchanged] = attnums[i];
			chval[nchanged] = CStringGetTextDatum(sealed);
			nchanged++;
		}
	}

	if (nchanged == 0)
		return PointerGetDatum(newtup);
	return PointerGetDatum(heap_modify_tuple_by_cols(newtup, desc, nchanged,
													 chattr, chval, chnull));
}

/*
 * wxpay_seal_config(): seal every plaintext value and re-seal every value
 * sealed under the previous root key; the number of values written.  For
 * the extension's owner (EXECUTE is revoked from PUBLIC).
 */
Datum
wxpay_seal_config(PG_FUNCTION_ARGS)
{
	Oid			nspoid = get_func_namespace(fcinfo->flinfo->fn_oid);
	char	   *nspname = get_namespace_name(nspoid);
	const char *qnsp;
	static const char *const cols[2] = {"private_key", "apiv3_key"};
	const RootKeySlot *cur;
	SPITupleTable *tab;
	uint64		nrows;
	int			count = 0;
	int			rc;

	if (nspname == NULL)
		elog(ERROR, "cache lookup failed for namespace %u", nspoid);
	qnsp = quote_identifier(nspname);

	cur = RootKeyCurrent();
	if (cur == NULL)
	{
		ereport(ERROR,
				(errcode(ERRCODE_WXPAY_CONFIG_ERROR),
				 errmsg("no wxpay root key is configured"),
				 errdetail("wxpay.root_key_command is empty."),
				 errhint("Set wxpay.root_key_command in the server's configuration and reload (doc/security.md, \"Keys at rest\").")));
		PG_RETURN_NULL();		/* not reached */
	}

	if ((rc = SPI_connect()) != SPI_OK_CONNECT)
		wxpay_spi_error("SPI_connect", rc);
	rc = SPI_execute(psprintf("SELECT name, private_key, apiv3_key FROM %s.wxpay_config "
							  "ORDER BY name FOR UPDATE", qnsp), false, 0);
	if (rc != SPI_OK_SELECT)
		wxpay_spi_error("SPI_execute", rc);
	tab = SPI_tuptable;
	nrows = SPI_processed;

	for (uint64 r = 0; r < nrows; r++)
	{
		char	   *name = SPI_getvalue(tab->vals[r], tab->tupdesc, 1);

		for (int i = 0; i < 2; i++)
		{
			char	   *stored = SPI_getvalue(tab->vals[r], tab->tupdesc, 2 + i);
			char		fp[WXPAY_SEAL_FP_LEN + 1];
			const char *payload;
			char	   *plain;
			char	   *sealed;
			Oid			argtypes[2] = {TEXTOID, TEXTOID};
			Datum		args[2];

			if (stored == NULL)
				continue;
			if (wxpay_seal_parse(stored, fp, &payload) && strcmp(fp, cur->fp) == 0)
				continue;
			plain = wxpay_config_open_secret(name, cols[i], stored);
			sealed = RootKeySealWith(cur, name, cols[i], plain);
			RootKeySecretFree(plain);
			RootKeySecretFree(stored);

			args[0] = CStringGetTextDatum(sealed);
			args[1] = CStringGetTextDatum(name);
			rc = SPI_execute_with_args(psprintf("UPDATE %s.wxpay_config SET %s = $1 "
												"WHERE name OPERATOR(pg_catalog.=) $2",
												qnsp, cols[i]),
									   2, argtypes, args, NULL, false, 0);
			if (rc != SPI_OK_UPDATE || SPI_processed != 1)
				wxpay_spi_error("SPI_execute_with_args", rc);
			count++;
		}
	}
	SPI_finish();
	PG_RETURN_INT32(count);
}
