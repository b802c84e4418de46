/*
** tenantd_guard: a SQLite loadable extension that puts a guard around the
** SQL a tenant sends to its own database.
**
** better-sqlite3 exposes no authorizer, progress handler, interrupt or limits
** API, so everything the service needs to contain tenant SQL lives here and
** is driven from JavaScript through token-protected SQL functions:
**
**   tenantd_guard_init(token)       set the 128-bit token (once)
**   tenantd_arm(token, timeout_ms)  guard ON, optional deadline
**   tenantd_disarm(token)           guard OFF, 1 if the deadline fired
**   tenantd_last_denial(token)      why the authorizer last said no, or NULL
**   tenantd_arm_call(token, timeout_ms, flags, max_length)
**                                   tenantd_arm with a choice of policy and a
**                                   per-call SQLITE_LIMIT_LENGTH
**   tenantd_policy(token, on)       tenant policy on/off, deadline kept
**   tenantd_length(token, max_length)
**                                   SQLITE_LIMIT_LENGTH for the rest of the
**                                   call (the next statement), until disarm
**   tenantd_arm(token, timeout_ms, call_id) and
**   tenantd_arm_call(token, timeout_ms, flags, max_length, call_id)
**                                   the same, for a call tenantd_cancel names
**   tenantd_cancel(token, call_id)  interrupt that call, wherever it runs
**   tenantd_interrupt_all(token)   interrupt every armed connection (exit)
**   tenantd_disarm returns 2 instead of 1 when the call was cancelled
**
** Loading the extension (entry point sqlite3_tenantdguard_init) also tightens
** the connection's limits and db_config flags for its whole lifetime, guard
** on or off.
**
** Build: scripts/build-guard.mjs. It links with -Wl,-z,nodelete because the
** watchdog thread below runs code of this library for the rest of the
** process, while SQLite dlclose()s an extension whenever the connection that
** loaded it closes.
*/
/* syncfs(2) */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "sqlite3ext.h"
SQLITE_EXTENSION_INIT1

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TOKEN_BYTES 16

/* SQLITE_LIMIT_LENGTH for the service's own statements (and for tenant calls
** that name no limit of their own). */
#define SERVICE_LENGTH (16 * 1024 * 1024)
#define DENIAL_BYTES 256

/* Once a deadline has passed, the watchdog interrupts the connection again
** every REFIRE_NS until it is disarmed. A single sqlite3_interrupt() can be
** lost: SQLite clears the flag whenever a statement starts while no other
** statement is active, so an interrupt that lands between two statements of
** one tenant call (or between arm and the first statement) would otherwise
** let the next statement run without any bound. */
#define REFIRE_NS (10ull * 1000ull * 1000ull)


/* Upper bound for timeout_ms (about 24.8 days); keeps the deadline
** arithmetic far from overflow whatever JavaScript passes in. */
#define MAX_TIMEOUT_MS ((sqlite3_int64)INT32_MAX)

typedef struct GuardCtx GuardCtx;
struct GuardCtx {
  sqlite3 *db;
  int nRef;                 /* SQL functions still holding this context */
  int hasToken;
  unsigned char token[TOKEN_BYTES];
  int guardOn;              /* authorizer enforces the tenant policy on
                            ** top-level SQL (trigger and view code is
                            ** always checked, see authorizer()) */
  int serviceLength;        /* SQLITE_LIMIT_LENGTH outside tenant calls */
  int watched;              /* on the watchdog list; written only by the
                            ** connection's own thread, under wdMutex */
  /* The fields below are shared with the watchdog; guarded by wdMutex. */
  uint64_t deadline;        /* CLOCK_MONOTONIC, ns */
  int fired;                /* the deadline passed since arm */
  GuardCtx *pPrev, *pNext;  /* watchdog list, sorted by deadline */
  /* Cancellation (see "Cancel by call id" below); guarded by wdMutex. */
  sqlite3_int64 callId;     /* the call armed now; 0 when none */
  int cancelled;            /* tenantd_cancel() named callId since arm */
  GuardCtx *pCallNext;      /* list of contexts armed with a call id */
  /* Owned by the connection's thread. */
  char denial[DENIAL_BYTES];/* last denial since arm; "" when none */
};

/* ---------------------------------------------------------------------------
** Watchdog: one thread per process, shared by every connection of every
** worker thread (they all dlopen() the same library, so they share these
** globals).
*/
static pthread_mutex_t wdMutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wdCond;
static pthread_once_t wdOnce = PTHREAD_ONCE_INIT;
static int wdStarted = 0;         /* set once by wdStart(), read after once */
static GuardCtx *wdHead = 0;      /* earliest deadline first */
static GuardCtx *wdTail = 0;
/* While the watchdog waits: when it will wake up by itself (UINT64_MAX when
** it waits for a signal). 0 while it is awake or already signalled, since it
** re-reads the list before waiting again. Disarm leaves this alone, so with
** a steady stream of arm/disarm the watchdog wakes at most once per timeout
** period instead of being signalled by every arm. */
static uint64_t wdWakeAt = 0;

static uint64_t monoNow(void){
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Caller holds wdMutex. */
static void wdUnlink(GuardCtx *p){
  if( p->pPrev ) p->pPrev->pNext = p->pNext; else wdHead = p->pNext;
  if( p->pNext ) p->pNext->pPrev = p->pPrev; else wdTail = p->pPrev;
  p->pPrev = p->pNext = 0;
}

/* Caller holds wdMutex. Scans from the tail because deadlines of successive
** arms mostly grow, which makes the usual insertion O(1). Returns true when
** p became the new earliest deadline. */
static int wdInsert(GuardCtx *p){
  GuardCtx *q = wdTail;
  while( q && q->deadline > p->deadline ) q = q->pPrev;
  p->pPrev = q;
  if( q ){
    p->pNext = q->pNext;
    q->pNext = p;
  }else{
    p->pNext = wdHead;
    wdHead = p;
  }
  if( p->pNext ) p->pNext->pPrev = p; else wdTail = p;
  return wdHead==p;
}

static void *wdMain(void *pArg){
  (void)pArg;
  pthread_mutex_lock(&wdMutex);
  for(;;){
    GuardCtx *p = wdHead;
    uint64_t now;
    if( p==0 ){
      wdWakeAt = UINT64_MAX;
      pthread_cond_wait(&wdCond, &wdMutex);
      wdWakeAt = 0;
      continue;
    }
    now = monoNow();
    if( p->deadline > now ){
      struct timespec ts;
      ts.tv_sec = (time_t)(p->deadline / 1000000000ull);
      ts.tv_nsec = (long)(p->deadline % 1000000000ull);
      wdWakeAt = p->deadline;
      pthread_cond_timedwait(&wdCond, &wdMutex, &ts);
      wdWakeAt = 0;
      continue;
    }
    /* Safe because a context is only freed after its destructor has taken
    ** wdMutex and unlinked it, and SQLite frees the connection only after
    ** running that destructor. */
    sqlite3_interrupt(p->db);
    p->fired = 1;
    wdUnlink(p);
    p->deadline = now + REFIRE_NS;
    wdInsert(p);
  }
  return 0;
}

static void wdStart(void){
  pthread_condattr_t ca;
  pthread_attr_t ta;
  pthread_t tid;
  sigset_t all, old;
  size_t stack = 64 * 1024;

  if( pthread_condattr_init(&ca) ) return;
  if( pthread_condattr_setclock(&ca, CLOCK_MONOTONIC)
   || pthread_cond_init(&wdCond, &ca) ){
    pthread_condattr_destroy(&ca);
    return;
  }
  pthread_condattr_destroy(&ca);

  if( pthread_attr_init(&ta) ) return;
  pthread_attr_setdetachstate(&ta, PTHREAD_CREATE_DETACHED);
#ifdef PTHREAD_STACK_MIN
  if( stack < (size_t)PTHREAD_STACK_MIN ) stack = (size_t)PTHREAD_STACK_MIN;
#endif
  pthread_attr_setstacksize(&ta, stack);

  /* The thread inherits the creator's signal mask; block everything so that
  ** process signals (SIGINT, SIGCHLD, ...) keep going to Node's threads. */
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  if( pthread_create(&tid, &ta, wdMain, 0)==0 ) wdStarted = 1;
  pthread_sigmask(SIG_SETMASK, &old, 0);
  pthread_attr_destroy(&ta);
}

/* ---------------------------------------------------------------------------
** Cancel by call id. The front end runs each tenant call on some worker
** thread's connection; when the call is cancelled (client cancel, client
** gone, shutdown) the main thread calls tenantd_cancel(token, call_id) on a
** connection of its own (same process, same globals) and the statement stops
** at once instead of at its deadline.
**
** Contexts armed with a call id are on callHead (unsorted; few at a time:
** one per busy connection). A cancel that finds its call re-schedules the
** context's deadline to "now", so the watchdog interrupts it and keeps doing
** so every REFIRE_NS until disarm: a single sqlite3_interrupt() landing
** between two statements would be lost. A cancel that finds nothing (the
** call is still queued, or about to arm) is remembered in a small ring, and
** an arm for that id finds itself cancelled at once. All under wdMutex.
*/
#define CANCEL_RING 256
static GuardCtx *callHead = 0;
static sqlite3_int64 cancelRing[CANCEL_RING];
static unsigned cancelNext = 0;

/* Caller holds wdMutex. */
static void callUnlink(GuardCtx *p){
  GuardCtx **pp;
  if( p->callId==0 ) return;
  for(pp=&callHead; *pp; pp=&(*pp)->pCallNext){
    if( *pp==p ){ *pp = p->pCallNext; break; }
  }
  p->pCallNext = 0;
  p->callId = 0;
}

/* Caller holds wdMutex. Interrupts p now and makes the watchdog repeat it. */
static void callInterrupt(GuardCtx *p){
  p->cancelled = 1;
  sqlite3_interrupt(p->db);
  if( p->watched ){
    wdUnlink(p);
    p->deadline = monoNow();
    wdInsert(p);
    wdWakeAt = 0;
    pthread_cond_signal(&wdCond);
  }
}

static int callDisarm(GuardCtx *p, int fired);

static int wdStartedOk(void){
  pthread_once(&wdOnce, wdStart);
  return wdStarted;
}

/* ---------------------------------------------------------------------------
** Context lifetime.
**
** INVARIANT: a GuardCtx is freed only by ctxRelease(), which runs from the
** xDestroy of the SQL functions, i.e. while SQLite closes the connection (or
** replaces the functions). Before freeing, it takes wdMutex and unlinks the
** context, and the watchdog only dereferences contexts (and calls
** sqlite3_interrupt on their db) while holding wdMutex. So the watchdog never
** touches a freed context or a closed connection: the connection object
** itself outlives the function destructors inside sqlite3_close().
**
** Every one of the four functions holds a reference, so that redefining one
** of them (e.g. db.function('tenantd_arm', ...)) cannot free the context
** while the others still use it.
*/
static void ctxRelease(void *pArg){
  GuardCtx *p = (GuardCtx*)pArg;
  if( --p->nRef > 0 ) return;
  pthread_mutex_lock(&wdMutex);
  callUnlink(p);
  if( p->watched ){
    wdUnlink(p);
    p->watched = 0;
  }
  pthread_mutex_unlock(&wdMutex);
  sqlite3_free(p);
}

/* ---------------------------------------------------------------------------
** Token-protected SQL functions.
*/
static const char zNotPermitted[] = "tenantd: not permitted";

/* Constant-time compare: the token is the only thing that separates tenant
** SQL (which can call these functions) from the service. */
static int tokenMatches(GuardCtx *p, sqlite3_value *v){
  const unsigned char *z;
  unsigned diff = 0;
  int i;
  if( !p->hasToken || sqlite3_value_type(v)!=SQLITE_BLOB ) return 0;
  z = (const unsigned char*)sqlite3_value_blob(v);
  if( z==0 || sqlite3_value_bytes(v)!=TOKEN_BYTES ) return 0;
  for(i=0; i<TOKEN_BYTES; i++) diff |= (unsigned)(z[i] ^ p->token[i]);
  return diff==0;
}

static void fnGuardInit(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  const void *z;
  (void)argc;
  if( p->hasToken ){
    sqlite3_result_error(ctx, "tenantd: guard token already set", -1);
    return;
  }
  z = sqlite3_value_blob(argv[0]);
  if( sqlite3_value_type(argv[0])!=SQLITE_BLOB || z==0
   || sqlite3_value_bytes(argv[0])!=TOKEN_BYTES ){
    sqlite3_result_error(ctx, "tenantd: token must be a 16-byte blob", -1);
    return;
  }
  memcpy(p->token, z, TOKEN_BYTES);
  p->hasToken = 1;
  sqlite3_result_int(ctx, 1);
}

/* Accepts INTEGER or REAL (better-sqlite3 binds JS numbers as REAL and
** BigInts as INTEGER); anything else, NaN or <=0 means "no deadline". */
static sqlite3_int64 timeoutArg(sqlite3_value *v){
  switch( sqlite3_value_numeric_type(v) ){
    case SQLITE_INTEGER: {
      sqlite3_int64 ms = sqlite3_value_int64(v);
      if( ms<=0 ) return 0;
      return ms>MAX_TIMEOUT_MS ? MAX_TIMEOUT_MS : ms;
    }
    case SQLITE_FLOAT: {
      double d = sqlite3_value_double(v);
      if( !(d>0.0) ) return 0;                 /* also NaN */
      if( d>=(double)MAX_TIMEOUT_MS ) return MAX_TIMEOUT_MS;
      return d<1.0 ? 1 : (sqlite3_int64)d;
    }
    default:
      return 0;
  }
}

/* Flags of tenantd_arm_call's third argument. */
#define ARM_TENANT_POLICY 0x01   /* top-level SQL is tenant SQL */
#define ARM_RESET_SESSION 0x02   /* last_insert_rowid() starts at 0 */

/* Smallest and largest per-call SQLITE_LIMIT_LENGTH accepted; 0 or less
** keeps the service's own value. */
#define MIN_CALL_LENGTH 1024
#define MAX_CALL_LENGTH (64 * 1024 * 1024)

/* Arms the guard: the policy for top-level SQL, an optional deadline
** (ms>0) and an optional length limit for this call. Returns an error
** message or 0. */
static const char *armCall(
  GuardCtx *p, sqlite3_int64 ms, int flags, sqlite3_int64 maxLength
){
  if( ms>0 ){
    pthread_once(&wdOnce, wdStart);
    if( !wdStarted ) return "tenantd: watchdog thread unavailable";
  }
  p->guardOn = (flags & ARM_TENANT_POLICY)!=0;
  p->denial[0] = 0;
  if( flags & ARM_RESET_SESSION ){
    /* Another call's last insert (the service's own event append included)
    ** is not this call's business. */
    sqlite3_set_last_insert_rowid(p->db, 0);
  }
  if( maxLength>0 ){
    if( maxLength<MIN_CALL_LENGTH ) maxLength = MIN_CALL_LENGTH;
    if( maxLength>MAX_CALL_LENGTH ) maxLength = MAX_CALL_LENGTH;
    sqlite3_limit(p->db, SQLITE_LIMIT_LENGTH, (int)maxLength);
  }
  if( ms>0 ){
    uint64_t deadline = monoNow() + (uint64_t)ms * 1000000ull;
    pthread_mutex_lock(&wdMutex);
    if( p->watched ) wdUnlink(p);            /* re-arm without disarm */
    p->watched = 1;
    p->fired = 0;
    p->deadline = deadline;
    wdInsert(p);
    /* Only wake the watchdog when it would otherwise sleep past this
    ** deadline. */
    if( deadline < wdWakeAt ){
      wdWakeAt = 0;
      pthread_cond_signal(&wdCond);
    }
    pthread_mutex_unlock(&wdMutex);
  }else if( p->watched ){
    pthread_mutex_lock(&wdMutex);
    wdUnlink(p);
    p->watched = 0;
    p->fired = 0;
    pthread_mutex_unlock(&wdMutex);
  }else{
    p->fired = 0;                             /* not shared while unwatched */
  }
  return 0;
}

/* tenantd_arm(token, timeout_ms): tenant policy, deadline, session reset. */
static void fnArm(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  const char *zErr;
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  zErr = armCall(p, timeoutArg(argv[1]),
                 ARM_TENANT_POLICY | ARM_RESET_SESSION, 0);
  if( zErr ){
    sqlite3_result_error(ctx, zErr, -1);
    return;
  }
  sqlite3_result_int(ctx, 1);
}

/* tenantd_arm_call(token, timeout_ms, flags, max_length): as tenantd_arm,
** with the policy chosen by flags (without ARM_TENANT_POLICY only trigger
** and view code is checked: the service's own statements under a tenant's
** deadline) and a per-call SQLITE_LIMIT_LENGTH (<=0: unchanged). */
static void fnArmCall(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  const char *zErr;
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  zErr = armCall(p, timeoutArg(argv[1]), sqlite3_value_int(argv[2]),
                 sqlite3_value_int64(argv[3]));
  if( zErr ){
    sqlite3_result_error(ctx, zErr, -1);
    return;
  }
  sqlite3_result_int(ctx, 1);
}

/* tenantd_policy(token, on): switches the tenant policy for top-level SQL
** without touching the deadline, so that the service can run its own
** statements (a savepoint around tenant DDL, the schema check after it) in
** the middle of a tenant call. */
static void fnPolicy(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  p->guardOn = sqlite3_value_int(argv[1])!=0;
  sqlite3_result_int(ctx, 1);
}

/* tenantd_length(token, max_length): SQLITE_LIMIT_LENGTH from now until
** tenantd_disarm, clamped as tenantd_arm_call's; the service narrows it for
** a statement whose result row would otherwise be built from many values of
** the call's full length. Returns the limit now in force. */
static void fnLength(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  sqlite3_int64 maxLength;
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  maxLength = sqlite3_value_int64(argv[1]);
  if( maxLength<MIN_CALL_LENGTH ) maxLength = MIN_CALL_LENGTH;
  if( maxLength>MAX_CALL_LENGTH ) maxLength = MAX_CALL_LENGTH;
  sqlite3_limit(p->db, SQLITE_LIMIT_LENGTH, (int)maxLength);
  sqlite3_result_int64(ctx, sqlite3_limit(p->db, SQLITE_LIMIT_LENGTH, -1));
}

static void fnDisarm(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  int fired;
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  p->guardOn = 0;
  if( sqlite3_limit(p->db, SQLITE_LIMIT_LENGTH, -1)!=p->serviceLength ){
    sqlite3_limit(p->db, SQLITE_LIMIT_LENGTH, p->serviceLength);
  }
  if( p->watched ){
    pthread_mutex_lock(&wdMutex);
    wdUnlink(p);
    p->watched = 0;
    fired = p->fired;
    pthread_mutex_unlock(&wdMutex);
  }else{
    fired = p->fired;
  }

  sqlite3_result_int(ctx, callDisarm(p, fired));
}

static void fnLastDenial(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  if( p->denial[0] ){
    sqlite3_result_text(ctx, p->denial, -1, SQLITE_TRANSIENT);
  }else{
    sqlite3_result_null(ctx);
  }
}

/* Drops p's call id at disarm; 2 when the call was cancelled, else fired. */
static int callDisarm(GuardCtx *p, int fired){
  int cancelled;
  pthread_mutex_lock(&wdMutex);
  cancelled = p->cancelled;
  p->cancelled = 0;
  callUnlink(p);
  pthread_mutex_unlock(&wdMutex);
  return cancelled ? 2 : fired;
}

/* Registers p as running call `id` (0: none), after an arm. A cancel that
** came first (it is in the ring) interrupts it at once. */
static void callRegister(GuardCtx *p, sqlite3_int64 id){
  int i;
  if( id==0 ) return;
  pthread_mutex_lock(&wdMutex);
  callUnlink(p);
  p->cancelled = 0;
  p->callId = id;
  p->pCallNext = callHead;
  callHead = p;
  for(i=0; i<CANCEL_RING; i++){
    if( cancelRing[i]==id ){
      cancelRing[i] = 0;
      callInterrupt(p);
      break;
    }
  }
  pthread_mutex_unlock(&wdMutex);
}

/* tenantd_arm(token, timeout_ms, call_id): tenantd_arm for one call that
** tenantd_cancel can name. call_id must be non-zero and unique in the
** process for as long as the call may be cancelled. */
static void fnArmWithId(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  fnArm(ctx, 2, argv);
  callRegister(p, sqlite3_value_int64(argv[2]));
}

/* tenantd_arm_call(token, timeout_ms, flags, max_length, call_id): the same
** for tenantd_arm_call. */
static void fnArmCallWithId(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  fnArmCall(ctx, 4, argv);
  callRegister(p, sqlite3_value_int64(argv[4]));
}

/* tenantd_cancel(token, call_id): 1 when the call was running and is now
** interrupted, 0 when it was not (yet) armed: then its arm interrupts it. */
static void fnCancel(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  sqlite3_int64 id = sqlite3_value_int64(argv[1]);
  GuardCtx *q;
  int found = 0;
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  if( id==0 ){
    sqlite3_result_int(ctx, 0);
    return;
  }
  if( !wdStartedOk() ){
    sqlite3_result_error(ctx, "tenantd: watchdog thread unavailable", -1);
    return;
  }
  pthread_mutex_lock(&wdMutex);
  for(q=callHead; q; q=q->pCallNext){
    if( q->callId==id ){
      callInterrupt(q);
      found = 1;
    }
  }
  if( !found ){
    cancelRing[cancelNext % CANCEL_RING] = id;
    cancelNext++;
  }
  pthread_mutex_unlock(&wdMutex);
  sqlite3_result_int(ctx, found);
}

/* tenantd_interrupt_all(token): interrupts every armed connection of the
** process (calls and deadlines alike), for a shutdown that cannot wait: a
** worker thread stuck in a statement would otherwise hold up the exit.
** Returns how many it interrupted. */
static void fnInterruptAll(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  GuardCtx *p = (GuardCtx*)sqlite3_user_data(ctx);
  GuardCtx *q;
  int n = 0;
  (void)argc;
  if( !tokenMatches(p, argv[0]) ){
    sqlite3_result_error(ctx, zNotPermitted, -1);
    return;
  }
  if( !wdStartedOk() ){
    sqlite3_result_error(ctx, "tenantd: watchdog thread unavailable", -1);
    return;
  }
  pthread_mutex_lock(&wdMutex);
  for(q=callHead; q; q=q->pCallNext){ callInterrupt(q); n++; }
  for(q=wdHead; q; q=q->pNext){
    if( q->callId==0 ){ sqlite3_interrupt(q->db); n++; }
  }
  pthread_mutex_unlock(&wdMutex);
  sqlite3_result_int(ctx, n);
}

/* ---------------------------------------------------------------------------
** Authorizer policy (only while the guard is ON).
*/
static int lowerAscii(int c){
  return (c>='A' && c<='Z') ? c + ('a' - 'A') : c;
}

static int hasPrefixNoCase(const char *z, const char *zPrefix){
  if( z==0 ) return 0;
  while( *zPrefix ){
    if( lowerAscii((unsigned char)*z)!=(unsigned char)*zPrefix ) return 0;
    z++; zPrefix++;
  }
  return 1;
}

static int equalsNoCase(const char *z, const char *zLower){
  if( z==0 ) return 0;
  while( *z && *zLower ){
    if( lowerAscii((unsigned char)*z)!=(unsigned char)*zLower ) return 0;
    z++; zLower++;
  }
  return *z==0 && *zLower==0;
}

static int inListNoCase(const char *z, const char *const *azList){
  for(; *azList; azList++){
    if( equalsNoCase(z, *azList) ) return 1;
  }
  return 0;
}

static int isServiceObject(const char *z){
  return hasPrefixNoCase(z, "_tenantd");
}

/* ---------------------------------------------------------------------------
** What tenant SQL may reach. Everything below is an ALLOW-list: a function,
** virtual-table module or pragma that is not named here is refused, so a
** newer SQLite with new functions fails closed. The README's "Security
** model" gives the reason for every family; test/guard.test.ts checks the
** lists against the library as built (pragma_function_list,
** pragma_module_list, pragma_pragma_list).
*/

/* Pragmas that only read, and whose argument (if any) names a schema object
** or a row limit rather than a new setting. */
static const char *const azPragmaIntrospect[] = {
  "table_info", "table_xinfo", "table_list", "index_list", "index_info",
  "index_xinfo", "foreign_key_list", "foreign_key_check", "integrity_check",
  "quick_check", 0
};
/* Pragmas that may be read but not set: no argument allowed. Setting any of
** the connection-level ones would outlive the call (the connection serves
** every key of the tenant, and group commit puts several calls in one
** transaction), so they are read-only to tenants; the service fixes them
** when it opens the database. */
static const char *const azPragmaReadOnly[] = {
  "page_count", "page_size", "freelist_count", "schema_version",
  "data_version", "compile_options", "function_list", "module_list",
  "pragma_list", "collation_list", "encoding", "journal_mode", "synchronous",
  "max_page_count", "foreign_keys", "recursive_triggers",
  "defer_foreign_keys", "case_sensitive_like", "automatic_index",
  "auto_vacuum", "busy_timeout", "cache_size", "cache_spill",
  "cell_size_check", "ignore_check_constraints", "legacy_alter_table",
  "query_only", "reverse_unordered_selects", "secure_delete", "temp_store",
  "threads", "trusted_schema", "journal_size_limit", "mmap_size",
  "locking_mode", "wal_autocheckpoint", "analysis_limit",
  "user_version", "application_id", 0
};
/* Pragmas a tenant may set: both live in the database file's header, are
** the tenant's own data and leave nothing on the connection. optimize only
** runs ANALYZE where it is due (its argument is a bit mask of what to do).
*/
static const char *const azPragmaSettable[] = {
  "user_version", "application_id", "optimize", 0
};

/* Virtual-table modules a tenant may CREATE VIRTUAL TABLE with: full-text
** search and R*Tree indexes, kept in the tenant's own file. The connection
** drops every other module when the extension loads (sqlite3_drop_modules),
** which also takes away the eponymous tables of those modules (dbstat,
** fts3tokenize, ...). */
static const char *const azVtabModules[] = {
  "fts3", "fts4", "fts5", "rtree", "rtree_i32", 0
};
/* The table-valued functions this build offers without a module of its
** own: json_each, json_tree, jsonb_each and jsonb_tree (registered on first
** use, so sqlite3_drop_modules cannot remove them; they only parse the JSON
** they are given) and pragma_* tables, each of which runs its PRAGMA
** through the authorizer and so under the pragma lists above. */

/* SQL functions tenant SQL may call. */
static const char *const azFunctions[] = {
  /* core scalar */
  "abs", "changes", "char", "coalesce", "concat", "concat_ws", "format",
  "glob", "hex", "if", "ifnull", "iif", "instr", "last_insert_rowid",
  "length", "like", "likelihood", "likely", "lower", "ltrim", "max", "min",
  "nullif", "octet_length", "printf", "quote", "random", "randomblob",
  "replace", "round", "rtrim", "sign", "soundex", "sqlite_version",
  "substr", "substring", "subtype", "trim", "typeof", "unhex", "unicode",
  "unistr", "unistr_quote", "unlikely", "upper", "zeroblob",
  /* date and time */
  "current_date", "current_time", "current_timestamp", "date", "datetime",
  "julianday", "strftime", "time", "timediff", "unixepoch",
  /* math */
  "acos", "acosh", "asin", "asinh", "atan", "atan2", "atanh", "ceil",
  "ceiling", "cos", "cosh", "degrees", "exp", "floor", "ln", "log", "log10",
  "log2", "mod", "pi", "pow", "power", "radians", "sin", "sinh", "sqrt",
  "tan", "tanh", "trunc",
  /* aggregate */
  "avg", "count", "group_concat", "median", "percentile", "percentile_cont",
  "percentile_disc", "string_agg", "sum", "total",
  /* window */
  "cume_dist", "dense_rank", "first_value", "lag", "last_value", "lead",
  "nth_value", "ntile", "percent_rank", "rank", "row_number",
  /* JSON */
  "->", "->>", "json", "json_array", "json_array_insert",
  "json_array_length", "json_error_position", "json_extract",
  "json_group_array", "json_group_object", "json_insert", "json_object",
  "json_patch", "json_pretty", "json_quote", "json_remove", "json_replace",
  "json_set", "json_type", "json_valid", "jsonb", "jsonb_array",
  "jsonb_array_insert", "jsonb_extract", "jsonb_group_array",
  "jsonb_group_object", "jsonb_insert", "jsonb_object", "jsonb_patch",
  "jsonb_remove", "jsonb_replace", "jsonb_set",
  /* full-text search over the tenant's own fts3/4/5 tables */
  "match", "matchinfo", "offsets", "optimize", "snippet", "highlight",
  "bm25", "fts5_get_locale", "fts5_insttoken", "fts5_locale",
  /* SQLite's own, reached only from the SQL that SQLite itself runs for an
  ** allowed statement (ALTER TABLE, ANALYZE): SQLITE_FUNC_INTERNAL, which
  ** SQL text cannot call. */
  "sqlite_rename_column", "sqlite_rename_table", "sqlite_rename_test",
  "sqlite_rename_quotefix", "sqlite_drop_column", "sqlite_table_type",
  "stat_init", "stat_push", "stat_get",
  /* the guard's own control functions: the service's statements that call
  ** them may be re-prepared while the guard is on; the token protects them */
  "tenantd_guard_init", "tenantd_arm", "tenantd_disarm",
  "tenantd_last_denial", "tenantd_arm_call", "tenantd_policy",
  "tenantd_length",
  0
};

/* sqlite_* tables a tenant may read. The schema tables are also writable as
** far as the authorizer is concerned, because every CREATE/DROP/ALTER
** writes them through nested SQL that reaches the authorizer; SQLite itself
** refuses direct writes (writable_schema is denied and DEFENSIVE is on). */
static const char *const azSchemaTables[] = {
  "sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema",
  0
};

/* zDb is the schema the pragma names ("temp" in PRAGMA temp.x), or NULL. */
static const char *pragmaDecision(
  const char *zName, const char *zArg, const char *zDb
){
  if( inListNoCase(zName, azPragmaIntrospect) ){
    /* Not secret, but keep service tables out of tenant introspection, the
    ** same way reading them is refused. */
    return isServiceObject(zArg) ? "object" : 0;
  }
  if( zArg==0 && inListNoCase(zName, azPragmaReadOnly) ) return 0;
  /* The temp schema's header belongs to the connection, not the tenant. */
  if( inListNoCase(zName, azPragmaSettable)
   && (zDb==0 || equalsNoCase(zDb, "main")) ) return 0;
  return "pragma";
}

/* Table-level access (READ/INSERT/UPDATE/DELETE) to sqlite_* tables. */
static int internalTableAllowed(int op, const char *zTab){
  if( inListNoCase(zTab, azSchemaTables) ) return 1;
  /* DROP TABLE and ALTER TABLE ... RENAME maintain sqlite_sequence with
  ** nested SQL that reaches the authorizer, and direct writes only affect the
  ** tenant's own AUTOINCREMENT counters. */
  if( equalsNoCase(zTab, "sqlite_sequence") ) return 1;
  if( hasPrefixNoCase(zTab, "sqlite_stat") ){
    /* ANALYZE reads them back; DROP TABLE/INDEX deletes their rows through
    ** nested SQL. Hand-written statistics (INSERT/UPDATE) are refused. */
    return op==SQLITE_READ || op==SQLITE_DELETE;
  }
  return 0;   /* sqlite_dbpage, sqlite_stmt, ... */
}

/* True when a VACUUM statement of this connection is running, i.e. the
** authorizer is being asked about the SQL that VACUUM itself prepares
** (ATTACH of the transient database, copying every table including the
** service's own). Nothing a tenant controls can be prepared in that window:
** OP_Vacuum runs to completion inside one sqlite3_step(). */
static int sqlIsVacuum(const char *z){
  if( z==0 ) return 0;
  for(;;){
    while( *z==' ' || *z=='\t' || *z=='\n' || *z=='\r' || *z=='\f' ) z++;
    if( z[0]=='-' && z[1]=='-' ){
      while( *z && *z!='\n' ) z++;
    }else if( z[0]=='/' && z[1]=='*' ){
      z += 2;
      while( *z && !(z[0]=='*' && z[1]=='/') ) z++;
      if( *z ) z += 2;
    }else{
      break;
    }
  }
  if( !hasPrefixNoCase(z, "vacuum") ) return 0;
  z += 6;
  return !((*z>='a' && *z<='z') || (*z>='A' && *z<='Z')
           || (*z>='0' && *z<='9') || *z=='_' || *z=='$'
           || (unsigned char)*z>=0x80);
}

static int vacuumRunning(sqlite3 *db){
  sqlite3_stmt *s;
  for(s=sqlite3_next_stmt(db, 0); s; s=sqlite3_next_stmt(db, s)){
    if( sqlite3_stmt_busy(s) && sqlIsVacuum(sqlite3_sql(s)) ) return 1;
  }
  return 0;
}

static const char *nz(const char *z){ return z ? z : "?"; }

/* Returns SQLITE_OK, or SQLITE_DENY with the reason written to zOut. */
static int policy(
  int op, const char *a1, const char *a2, const char *a3,
  char *zOut, int nOut
){
  const char *zWhat = 0;   /* "<action> <object>" for object denials */
  const char *zObj = 0;

  switch( op ){
    case SQLITE_SELECT:
    case SQLITE_RECURSIVE:
    case SQLITE_ANALYZE:    /* statistics only; runs over every table */
    case SQLITE_REINDEX:
      return SQLITE_OK;

    case SQLITE_FUNCTION:
      /* a2 = function name. Only the allow-list: e.g. fts3_tokenizer()
      ** with a bound blob makes SQLite call through a pointer the caller
      ** chose, load_extension() loads code, sqlite_log() writes the
      ** process's log. */
      if( inListNoCase(a2, azFunctions) ) return SQLITE_OK;
      sqlite3_snprintf(nOut, zOut, "function %.64s() is not permitted",
                       nz(a2));
      return SQLITE_DENY;

    case SQLITE_ATTACH:
      /* An empty file name is also what plain VACUUM attaches; the caller
      ** lets that through while a VACUUM is running. */
      sqlite3_snprintf(nOut, zOut, "ATTACH is not permitted");
      return SQLITE_DENY;
    case SQLITE_DETACH:
      sqlite3_snprintf(nOut, zOut, "DETACH is not permitted");
      return SQLITE_DENY;

    case SQLITE_TRANSACTION:
      sqlite3_snprintf(nOut, zOut,
          "transaction control (%.20s) is not permitted: tenantd manages "
          "transactions", nz(a1));
      return SQLITE_DENY;
    case SQLITE_SAVEPOINT: {
      const char *zVerb = "SAVEPOINT";
      if( equalsNoCase(a1, "release") ) zVerb = "RELEASE";
      else if( equalsNoCase(a1, "rollback") ) zVerb = "ROLLBACK TO";
      sqlite3_snprintf(nOut, zOut,
          "%s %.64s is not permitted: tenantd manages transactions",
          zVerb, nz(a2));
      return SQLITE_DENY;
    }

    case SQLITE_PRAGMA: {
      const char *zWhy = pragmaDecision(a1, a2, a3);
      if( zWhy==0 ) return SQLITE_OK;
      if( zWhy[0]=='o' ){
        sqlite3_snprintf(nOut, zOut,
            "PRAGMA %.64s on %.64s is not permitted", nz(a1), a2);
      }else if( a2 ){
        sqlite3_snprintf(nOut, zOut,
            "PRAGMA %.64s=%.64s is not permitted", nz(a1), a2);
      }else{
        sqlite3_snprintf(nOut, zOut, "PRAGMA %.64s is not permitted", nz(a1));
      }
      return SQLITE_DENY;
    }

    case SQLITE_CREATE_TEMP_TABLE:   zWhat = "CREATE TEMP TABLE";   break;
    case SQLITE_CREATE_TEMP_INDEX:   zWhat = "CREATE TEMP INDEX";   break;
    case SQLITE_CREATE_TEMP_TRIGGER: zWhat = "CREATE TEMP TRIGGER"; break;
    case SQLITE_CREATE_TEMP_VIEW:    zWhat = "CREATE TEMP VIEW";    break;
    case SQLITE_DROP_TEMP_TABLE:     zWhat = "DROP TEMP TABLE";     break;
    case SQLITE_DROP_TEMP_INDEX:     zWhat = "DROP TEMP INDEX";     break;
    case SQLITE_DROP_TEMP_TRIGGER:   zWhat = "DROP TEMP TRIGGER";   break;
    case SQLITE_DROP_TEMP_VIEW:      zWhat = "DROP TEMP VIEW";      break;

    case SQLITE_READ:
    case SQLITE_INSERT:
    case SQLITE_UPDATE:
    case SQLITE_DELETE: {
      const char *zVerb = op==SQLITE_READ ? "reading" :
                          op==SQLITE_INSERT ? "inserting into" :
                          op==SQLITE_UPDATE ? "updating" : "deleting from";
      if( op==SQLITE_INSERT && equalsNoCase(a3, "temp") ){
        /* Every way of creating a temp object inserts into the temp schema
        ** table, and not all of them are reported as CREATE_TEMP_*:
        ** "CREATE TABLE temp.x" comes as CREATE_TABLE (schema "temp") and
        ** "CREATE TRIGGER temp.x ON main_table" as CREATE_TRIGGER (schema
        ** "main"); only this INSERT tells where the latter goes. */
        sqlite3_snprintf(nOut, zOut, "creating objects in the temp schema is "
            "not permitted: temporary objects are not allowed");
        return SQLITE_DENY;
      }
      if( isServiceObject(a1)
       || (hasPrefixNoCase(a1, "sqlite_") && !internalTableAllowed(op, a1))){
        sqlite3_snprintf(nOut, zOut, "%s %.64s is not permitted", zVerb, a1);
        return SQLITE_DENY;
      }
      return SQLITE_OK;
    }

    /* a1 = object name, a2 = table name (index/trigger) or NULL. */
    case SQLITE_CREATE_TABLE:   zObj = "CREATE TABLE";   goto object_check;
    case SQLITE_CREATE_INDEX:   zObj = "CREATE INDEX";   goto object_check;
    case SQLITE_CREATE_TRIGGER: zObj = "CREATE TRIGGER"; goto object_check;
    case SQLITE_CREATE_VIEW:    zObj = "CREATE VIEW";    goto object_check;
    case SQLITE_DROP_TABLE:     zObj = "DROP TABLE";     goto object_check;
    case SQLITE_DROP_INDEX:     zObj = "DROP INDEX";     goto object_check;
    case SQLITE_DROP_TRIGGER:   zObj = "DROP TRIGGER";   goto object_check;
    case SQLITE_DROP_VIEW:      zObj = "DROP VIEW";      goto object_check;
    case SQLITE_DROP_VTABLE:    zObj = "DROP VIRTUAL TABLE"; a2 = 0;
    object_check:
      if( op!=SQLITE_DROP_VTABLE && zObj[0]=='C' && equalsNoCase(a3, "temp") ){
        sqlite3_snprintf(nOut, zOut, "%s temp.%.64s is not permitted: "
            "temporary objects are not allowed", zObj, nz(a1));
        return SQLITE_DENY;
      }
      if( isServiceObject(a1) || isServiceObject(a2) ){
        sqlite3_snprintf(nOut, zOut, "%s %.64s%s%.64s is not permitted", zObj,
            isServiceObject(a1) ? a1 : nz(a1),
            isServiceObject(a1) ? "" : " on ",
            isServiceObject(a1) ? "" : a2);
        return SQLITE_DENY;
      }
      return SQLITE_OK;

    case SQLITE_ALTER_TABLE:    /* a1 = schema, a2 = table */
      if( isServiceObject(a2) ){
        sqlite3_snprintf(nOut, zOut, "ALTER TABLE %.64s is not permitted", a2);
        return SQLITE_DENY;
      }
      return SQLITE_OK;

    case SQLITE_CREATE_VTABLE:  /* a1 = table, a2 = module, a3 = schema */
      if( isServiceObject(a1) ){
        sqlite3_snprintf(nOut, zOut,
            "CREATE VIRTUAL TABLE %.64s is not permitted", a1);
        return SQLITE_DENY;
      }
      if( equalsNoCase(a3, "temp") ){
        zWhat = "CREATE VIRTUAL TABLE temp.";
        break;
      }
      if( !inListNoCase(a2, azVtabModules) ){
        sqlite3_snprintf(nOut, zOut,
            "virtual table module %.64s is not permitted", nz(a2));
        return SQLITE_DENY;
      }
      return SQLITE_OK;

    default:
      sqlite3_snprintf(nOut, zOut,
          "operation %d is not permitted by tenantd_guard", op);
      return SQLITE_DENY;
  }

  /* Temporary objects: they live outside the tenant's database file and so
  ** outside its storage quota. */
  sqlite3_snprintf(nOut, zOut,
      "%s%s%.64s is not permitted: temporary objects are not allowed",
      zWhat, zWhat[strlen(zWhat)-1]=='.' ? "" : " ", nz(a1));
  return SQLITE_DENY;
}

static int authorizer(
  void *pArg, int op,
  const char *a1, const char *a2, const char *a3, const char *a4
){
  GuardCtx *p = (GuardCtx*)pArg;
  char zReason[DENIAL_BYTES];
  /* a4 names the trigger or view whose code is being prepared. That code is
  ** the tenant's (no trigger or view of the service's own exists: the
  ** service checks its schema when it opens a tenant), so it is checked as
  ** tenant SQL whoever's statement fired it: the service's own append into
  ** _tenantd_events, or an operator's migration. */
  if( !p->guardOn && a4==0 ) return SQLITE_OK;
  if( policy(op, a1, a2, a3, zReason, (int)sizeof(zReason))==SQLITE_OK ){
    return SQLITE_OK;
  }
  /* Only reached for would-be denials, so the statement scan costs nothing
  ** on the common path. */
  if( vacuumRunning(p->db) ){
    /* VACUUM INTO 'file' shows up as the ATTACH of a non-empty file name. */
    if( op!=SQLITE_ATTACH || a1==0 || a1[0]==0 ) return SQLITE_OK;
    sqlite3_snprintf((int)sizeof(zReason), zReason,
        "VACUUM INTO is not permitted");
  }
  if( a4 ){
    char zIn[DENIAL_BYTES];
    sqlite3_snprintf((int)sizeof(zIn), zIn, "%s (in trigger or view %.64s)",
                     zReason, a4);
    memcpy(zReason, zIn, sizeof(zReason));
  }
  memcpy(p->denial, zReason, sizeof(p->denial));
  return SQLITE_DENY;
}

/* ---------------------------------------------------------------------------
** Shared flush (--sync full --sync-flush shared, Linux). Tenant connections then commit with
** synchronous=NORMAL: their WAL is written but not synced at each commit.
** Every commit on a guarded connection marks the calling thread dirty (a
** commit hook, so no path that writes can be missed), and the shard, before
** it posts any answer, calls tenantd_sync(dir, 0) on a private connection
** of its own. If the thread's commits since the last sync all went to one
** database file, one fsync of that file's WAL (and of its directory, for a
** WAL created since) makes them durable, as synchronous=FULL would have at
** each commit; if they went to several, one syncfs(2) of the data
** directory's filesystem does it for all of them at once, instead of one
** fsync per tenant file and commit (bench/README.md: one file dirty, fsync
** 48 µs of CPU against 112 for syncfs; eight, 384 against 84). The state is
** per thread: a shard's commits all run on its own thread. The hook is on
** every guarded connection (a few stores per commit); only the shared flush
** reads the state.
*/
#define DIRTY_NONE 0
#define DIRTY_ONE 1   /* every commit since the last sync went to threadDirtyPath */
#define DIRTY_MANY 2  /* several files, or one whose WAL cannot be named */
static __thread int threadDirty = DIRTY_NONE;
static __thread char threadDirtyPath[PATH_MAX];

static int onCommit(void *pArg){
  sqlite3 *db = (sqlite3*)pArg;
  const char *zPath;
  size_t n;
  if( threadDirty==DIRTY_MANY ) return 0;
  zPath = db ? sqlite3_db_filename(db, "main") : 0;
  n = zPath ? strlen(zPath) : 0;
  if( threadDirty==DIRTY_ONE ){
    if( n==0 || strcmp(zPath, threadDirtyPath)!=0 ) threadDirty = DIRTY_MANY;
  }else if( n==0 || n + sizeof("-wal") > sizeof(threadDirtyPath) ){
    threadDirty = DIRTY_MANY;
  }else{
    memcpy(threadDirtyPath, zPath, n + 1);
    threadDirty = DIRTY_ONE;
  }
  return 0;  /* never vetoes the commit */
}

#ifdef __linux__
/* syncOneWal() could not open a file it needed: the caller syncs the whole
** filesystem instead. */
#define SYNC_UNOPENED (-1)

/* fsync(2) of PATH: 0 when done, SYNC_UNOPENED when it cannot be opened
** (gone, or out of descriptors), else fsync's errno. */
static int fsyncPath(const char *zPath, int flags){
  int fd = open(zPath, O_RDONLY | O_CLOEXEC | flags);
  int rc, err;
  if( fd<0 ) return SYNC_UNOPENED;
  rc = fsync(fd);
  err = errno;
  close(fd);
  return rc==0 ? 0 : err;
}

/* The one dirty database's WAL and its directory synced: 0 when done,
** SYNC_UNOPENED when either cannot be opened (the tenant was removed or
** replaced since, or its file is not in WAL mode), else fsync's errno. */
static int syncOneWal(void){
  char zWal[PATH_MAX];
  char *zSlash;
  int rc;
  sqlite3_snprintf((int)sizeof(zWal), zWal, "%s-wal", threadDirtyPath);
  rc = fsyncPath(zWal, 0);
  if( rc!=0 ) return rc;
  /* The directory entry of a WAL created since the last sync. */
  zSlash = strrchr(zWal, '/');
  if( zSlash==0 || zSlash==zWal ) return SYNC_UNOPENED;
  *zSlash = 0;
  return fsyncPath(zWal, O_DIRECTORY);
}
#endif

static void syncError(sqlite3_context *ctx, const char *zWhat, int err){
  char *zMsg = sqlite3_mprintf("tenantd_sync: %s: %s", zWhat, strerror(err));
  sqlite3_result_error(ctx, zMsg ? zMsg : "tenantd_sync failed", -1);
  sqlite3_free(zMsg);
}

/* tenantd_sync(DIR, FORCE): makes this thread's commits since the last sync
** durable. Returns 0 when there were none (and not FORCE), 1 when it synced
** DIR's filesystem (syncfs), 2 when it synced the one database's WAL. An
** error (open, fsync or syncfs failing) is raised as an SQL error and leaves
** the thread dirty. */
static void fnSync(sqlite3_context *ctx, int argc, sqlite3_value **argv){
  const char *zDir = (const char*)sqlite3_value_text(argv[0]);
  int force = sqlite3_value_int(argv[1]);
  (void)argc;
  if( zDir==0 ){
    sqlite3_result_error(ctx, "tenantd_sync: no directory", -1);
    return;
  }
  if( threadDirty==DIRTY_NONE && !force ){
    sqlite3_result_int(ctx, 0);
    return;
  }
#ifdef __linux__
  {
    int fd, rc, err;
    if( threadDirty==DIRTY_ONE && !force ){
      err = syncOneWal();
      if( err==0 ){
        threadDirty = DIRTY_NONE;
        sqlite3_result_int(ctx, 2);
        return;
      }
      /* A file that cannot be opened: the whole filesystem instead, below.
      ** A failing fsync is not retried another way: its error stands (the
      ** pages it could not write may be dropped, and a later sync would
      ** report success). */
      if( err!=SYNC_UNOPENED ){
        syncError(ctx, "fsync", err);
        return;
      }
    }
    fd = open(zDir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if( fd<0 ){
      syncError(ctx, "open", errno);
      return;
    }
    rc = syncfs(fd);
    err = errno;
    close(fd);
    if( rc!=0 ){
      syncError(ctx, "syncfs", err);
      return;
    }
    threadDirty = DIRTY_NONE;
    sqlite3_result_int(ctx, 1);
  }
#else
  sqlite3_result_error(ctx, "tenantd_sync: syncfs is Linux only", -1);
#endif
}

#ifdef _WIN32
__declspec(dllexport)
#endif
int sqlite3_tenantdflush_init(
  sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi
){
  int rc;
  SQLITE_EXTENSION_INIT2(pApi);
  rc = sqlite3_create_function_v2(db, "tenantd_sync", 2, SQLITE_UTF8 | SQLITE_DIRECTONLY, 0, fnSync, 0, 0, 0);
  if( rc!=SQLITE_OK && pzErrMsg ){
    *pzErrMsg = sqlite3_mprintf("tenantd_flush: cannot register tenantd_sync: %s", sqlite3_errstr(rc));
  }
  return rc;
}

/* ---------------------------------------------------------------------------
** Entry point.
*/
#ifdef _WIN32
__declspec(dllexport)
#endif
int sqlite3_tenantdguard_init(
  sqlite3 *db, char **pzErrMsg, const sqlite3_api_routines *pApi
){
  static const struct {
    const char *zName;
    int nArg;
    void (*xFunc)(sqlite3_context*, int, sqlite3_value**);
  } aFunc[] = {
    { "tenantd_guard_init",  1, fnGuardInit  },
    { "tenantd_arm",         2, fnArm        },
    { "tenantd_disarm",      1, fnDisarm     },
    { "tenantd_last_denial", 1, fnLastDenial },
    { "tenantd_arm_call",    4, fnArmCall    },
    { "tenantd_policy",      2, fnPolicy     },
    { "tenantd_length",      2, fnLength     },
    { "tenantd_arm",         3, fnArmWithId  },
    { "tenantd_arm_call",    5, fnArmCallWithId },
    { "tenantd_cancel",      2, fnCancel     },
    { "tenantd_interrupt_all", 1, fnInterruptAll },
  };
  const int nFunc = (int)(sizeof(aFunc)/sizeof(aFunc[0]));
  GuardCtx *p;
  int i, rc;
  SQLITE_EXTENSION_INIT2(pApi);

  p = (GuardCtx*)sqlite3_malloc((int)sizeof(*p));
  if( p==0 ) return SQLITE_NOMEM;
  memset(p, 0, sizeof(*p));
  p->db = db;
  p->nRef = nFunc;

  for(i=0; i<nFunc; i++){
    /* On failure SQLite has already called xDestroy for this function;
    ** release the references the unregistered ones would have held. */
    rc = sqlite3_create_function_v2(db, aFunc[i].zName, aFunc[i].nArg,
        SQLITE_UTF8 | SQLITE_DIRECTONLY, p, aFunc[i].xFunc, 0, 0, ctxRelease);
    if( rc!=SQLITE_OK ){
      int j;
      for(j=i+1; j<nFunc; j++) ctxRelease(p);
      if( pzErrMsg ){
        *pzErrMsg = sqlite3_mprintf("tenantd_guard: cannot register %s: %s",
                                    aFunc[i].zName, sqlite3_errstr(rc));
      }
      return rc;
    }
  }

  p->serviceLength = SERVICE_LENGTH;
  sqlite3_limit(db, SQLITE_LIMIT_LENGTH, SERVICE_LENGTH);
  sqlite3_limit(db, SQLITE_LIMIT_SQL_LENGTH, 1024 * 1024);
  sqlite3_limit(db, SQLITE_LIMIT_COLUMN, 2000);
  sqlite3_limit(db, SQLITE_LIMIT_EXPR_DEPTH, 200);
  sqlite3_limit(db, SQLITE_LIMIT_COMPOUND_SELECT, 100);
  sqlite3_limit(db, SQLITE_LIMIT_VARIABLE_NUMBER, 32766);
  sqlite3_limit(db, SQLITE_LIMIT_TRIGGER_DEPTH, 50);
  sqlite3_limit(db, SQLITE_LIMIT_LIKE_PATTERN_LENGTH, 50000);
  sqlite3_limit(db, SQLITE_LIMIT_FUNCTION_ARG, 127);
  /* ATTACHED is 1, not 0: VACUUM and VACUUM INTO both work by ATTACHing a
  ** transient/target database and check this limit even for that internal
  ** ATTACH ("too many attached databases - max 0"). With 0 neither the
  ** tenant's plain VACUUM nor the service's own guard-off VACUUM INTO copy
  ** could run. Tenant ATTACH is refused by the authorizer instead. */
  sqlite3_limit(db, SQLITE_LIMIT_ATTACHED, 1);

  sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, (int*)0);
  sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, (int*)0);
#ifdef SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE
  sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_ATTACH_CREATE, 0, (int*)0);
#endif
#ifdef SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE
  sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_ATTACH_WRITE, 0, (int*)0);
#endif
  /* Nothing else gets loaded into this connection: this clears the flag
  ** that sqlite3_load_extension() checks, which is also the path taken by the
  ** load_extension() SQL function (itself already off unless someone called
  ** sqlite3_enable_load_extension, which sqlite3ext.h does not even offer to
  ** extensions). The load in progress is not affected. */
  sqlite3_db_config(db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, (int*)0);

  /* Keep the -wal file when the connection closes: it is checkpointed and
  ** truncated to zero bytes (the connection sets a journal_size_limit), not
  ** unlinked. Creating it again on the next open cost about 1 ms here, most
  ** of a cold tenant's first call. Applies only to an open main database
  ** file, which it is when the extension is loaded right after opening. */
  {
    int persist = 1;
    sqlite3_file_control(db, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
  }

  /* The module allow-list: every other module goes, with its eponymous
  ** table (dbstat reads raw pages of any table, the service's included;
  ** fts3tokenize, fts4aux, fts5vocab, geopoly ...). */
  rc = sqlite3_drop_modules(db, (const char**)azVtabModules);
  if( rc!=SQLITE_OK ){
    if( pzErrMsg ){
      *pzErrMsg = sqlite3_mprintf("tenantd_guard: cannot drop modules: %s",
                                  sqlite3_errstr(rc));
    }
    return rc;
  }

  sqlite3_set_authorizer(db, authorizer, p);
  sqlite3_commit_hook(db, onCommit, db);
  return SQLITE_OK;
}
