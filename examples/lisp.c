/* lisp.c: the tiny Lisp of lisp.cpp in C11, against gofin's C API (<gofin/gofin.h>). Cons
 * cells, numbers, closures and environments come from gofin_malloc and are never freed by the
 * interpreter: the collector reclaims them once they are unreachable.
 *
 * Go idiom: allocate with new(T) and let the collector reclaim; runtime.AddCleanup
 * (gofin_add_cleanup) to observe, from another thread, that objects were freed.
 *
 * The language: integers, symbols, lists, (quote x) and 'x, (if c a b), (lambda (params)
 * body...) with closures, (define name value), and + - * < = cons car cdr null?.
 *
 * Where GC pointers may be kept, and why it works:
 * - On the stack and in registers: scanned conservatively, so C locals keep objects alive.
 * - In globals (data and bss): scanned (g_quote, g_global below).
 * - In gofin_malloc memory: scanned, so a list keeps its cells alive.
 * - In malloc memory: NOT scanned. The symbol table below is malloc'd, so it is registered
 *   with gofin_add_roots; without that its symbols could be freed while the table still
 *   points to them. */
#include <gofin/gofin.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct Obj Obj;
typedef struct Env Env;
typedef Obj* (*Prim)(Obj* args);

enum Tag { NUM, SYM, CONS, LAMBDA, PRIM };

/* Every Lisp value; the empty list () is NULL. */
struct Obj {
  enum Tag tag;
  long num;         /* NUM */
  const char* name; /* SYM: a string from gofin_malloc_noscan */
  Prim prim;        /* PRIM */
  Obj* car;         /* CONS; LAMBDA: the parameter list */
  Obj* cdr;         /* CONS; LAMBDA: the body (a list of expressions) */
  Env* env;         /* LAMBDA: the environment the closure captured */
};

/* One scope: a list of (symbol . value) pairs, and the enclosing scope. */
struct Env {
  Obj* vars;
  Env* parent;
};

static void Die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  printf("FAIL: ");
  vprintf(fmt, ap);
  printf("\n");
  va_end(ap);
  exit(1);
}

/* gofin_malloc returns zeroed memory, or NULL with the reason in gofin_last_error(). */
static Obj* NewObj(enum Tag tag) {
  Obj* o = gofin_malloc(sizeof *o);
  if (o == NULL) Die("gofin_malloc: %s", gofin_last_error());
  o->tag = tag;
  return o;
}

static Obj* MakeNum(long n) {
  Obj* o = NewObj(NUM);
  o->num = n;
  return o;
}

static Obj* Cons(Obj* car, Obj* cdr) {
  Obj* o = NewObj(CONS);
  o->car = car;
  o->cdr = cdr;
  return o;
}

/* ---- Symbols ------------------------------------------------------------------------------ */

/* The symbol table: a growable array in malloc memory, registered as a root range. Growing it
 * registers the new array before unregistering the old one, so no symbol is unrooted at any
 * moment. (Keeping the array itself in the GC heap, with a global pointing to it, would work
 * too: a global is a root.) */
static Obj** g_symbols;
static size_t g_nsymbols, g_capsymbols;

static Obj* Intern(const char* name, size_t len) {
  for (size_t i = 0; i < g_nsymbols; ++i) {
    if (strlen(g_symbols[i]->name) == len && memcmp(g_symbols[i]->name, name, len) == 0) {
      return g_symbols[i];
    }
  }
  if (g_nsymbols == g_capsymbols) {
    size_t cap = g_capsymbols == 0 ? 16 : 2 * g_capsymbols;
    Obj** bigger = calloc(cap, sizeof *bigger);
    if (bigger == NULL) Die("out of memory");
    if (g_nsymbols > 0) memcpy(bigger, g_symbols, g_nsymbols * sizeof *bigger);
    gofin_add_roots(bigger, bigger + cap);
    if (g_symbols != NULL) gofin_remove_roots(g_symbols, g_symbols + g_capsymbols);
    free(g_symbols);
    g_symbols = bigger;
    g_capsymbols = cap;
  }
  /* The name holds no pointers: noscan memory, never scanned, kept alive by sym->name. */
  char* copy = gofin_malloc_noscan(len + 1);
  if (copy == NULL) Die("gofin_malloc_noscan: %s", gofin_last_error());
  memcpy(copy, name, len); /* zeroed memory: already terminated */
  Obj* sym = NewObj(SYM);
  sym->name = copy;
  g_symbols[g_nsymbols++] = sym;
  return sym;
}

/* Globals are roots: these keep the special forms' symbols and the global scope alive. */
static Obj *g_quote, *g_if, *g_lambda, *g_define, *g_true;
static Env* g_global;

static Obj* Car(Obj* x) {
  if (x == NULL || x->tag != CONS) Die("car of a non-list");
  return x->car;
}
static Obj* Cdr(Obj* x) {
  if (x == NULL || x->tag != CONS) Die("cdr of a non-list");
  return x->cdr;
}
static long Num(Obj* x) {
  if (x == NULL || x->tag != NUM) Die("not a number");
  return x->num;
}

/* ---- Closures, counted with cleanups --------------------------------------------------------
 * Each closure gets a cleanup that counts it once it is freed. The cleanup runs on a cleanup
 * thread, hence the atomic counter; its argument is NULL: a cleanup must not reach its object
 * (gofin_add_cleanup refuses arg == obj; an arg through which the object is reachable would
 * keep it alive forever). */
static atomic_long g_closures_made, g_closures_freed;

static void ClosureFreed(void* arg) {
  (void)arg;
  atomic_fetch_add(&g_closures_freed, 1);
}

static Obj* MakeClosure(Obj* params, Obj* body, Env* env) {
  Obj* fn = NewObj(LAMBDA);
  fn->car = params;
  fn->cdr = body;
  fn->env = env; /* the closure keeps the scope it was made in alive */
  if (gofin_add_cleanup(fn, ClosureFreed, NULL) == 0) {
    Die("gofin_add_cleanup: %s", gofin_last_error());
  }
  atomic_fetch_add(&g_closures_made, 1);
  return fn;
}

/* ---- Reader ------------------------------------------------------------------------------- */

static const char* g_src;

static void SkipSpace(void) {
  for (;;) {
    if (*g_src == ';') {
      while (*g_src != '\0' && *g_src != '\n') ++g_src;
    } else if (*g_src == ' ' || *g_src == '\n' || *g_src == '\t') {
      ++g_src;
    } else {
      return;
    }
  }
}

static Obj* Read(void);

/* head and tail are locals: the stack keeps the list built so far alive while Read()
 * allocates the next element. */
static Obj* ReadListTail(void) {
  Obj* head = NULL;
  Obj* tail = NULL;
  for (;;) {
    SkipSpace();
    if (*g_src == '\0') Die("missing )");
    if (*g_src == ')') {
      ++g_src;
      return head;
    }
    Obj* cell = Cons(Read(), NULL);
    if (head == NULL) {
      head = cell;
    } else {
      tail->cdr = cell;
    }
    tail = cell;
  }
}

static Obj* Read(void) {
  SkipSpace();
  if (*g_src == '\0') Die("unexpected end of input");
  if (*g_src == '(') {
    ++g_src;
    return ReadListTail();
  }
  if (*g_src == ')') Die("unexpected )");
  if (*g_src == '\'') {
    ++g_src;
    Obj* quoted = Read();
    return Cons(g_quote, Cons(quoted, NULL));
  }
  const char* start = g_src;
  while (*g_src != '\0' && strchr(" \n\t()';", *g_src) == NULL) ++g_src;
  char* end = NULL;
  long n = strtol(start, &end, 10);
  if (end == g_src && end != start) return MakeNum(n);
  return Intern(start, (size_t)(g_src - start));
}

/* ---- Evaluator ---------------------------------------------------------------------------- */

static Obj* Lookup(Obj* sym, Env* env) {
  for (; env != NULL; env = env->parent) {
    for (Obj* v = env->vars; v != NULL; v = v->cdr) {
      if (v->car->car == sym) return v->car->cdr;
    }
  }
  Die("unbound symbol %s", sym->name);
  return NULL;
}

static void Define(Env* env, Obj* sym, Obj* value) {
  for (Obj* v = env->vars; v != NULL; v = v->cdr) {
    if (v->car->car == sym) {
      v->car->cdr = value;
      return;
    }
  }
  env->vars = Cons(Cons(sym, value), env->vars);
}

static Obj* Eval(Obj* x, Env* env);

static Obj* EvalList(Obj* list, Env* env) {
  Obj* head = NULL;
  Obj* tail = NULL;
  for (; list != NULL; list = Cdr(list)) {
    Obj* cell = Cons(Eval(list->car, env), NULL);
    if (head == NULL) {
      head = cell;
    } else {
      tail->cdr = cell;
    }
    tail = cell;
  }
  return head;
}

/* A loop for the forms in tail position, so that Lisp loops run in constant C stack. */
static Obj* Eval(Obj* x, Env* env) {
  for (;;) {
    if (x == NULL) return NULL;
    if (x->tag == SYM) return Lookup(x, env);
    if (x->tag != CONS) return x;

    Obj* op = x->car;
    Obj* args = x->cdr;
    if (op == g_quote) return Car(args);
    if (op == g_if) {
      Obj* rest = Cdr(args);
      x = Eval(Car(args), env) != NULL ? Car(rest) : (Cdr(rest) ? Car(Cdr(rest)) : NULL);
      continue;
    }
    if (op == g_lambda) return MakeClosure(Car(args), Cdr(args), env);
    if (op == g_define) {
      Obj* value = Eval(Car(Cdr(args)), env);
      Define(env, Car(args), value);
      return Car(args);
    }

    Obj* fn = Eval(op, env);
    Obj* values = EvalList(args, env);
    if (fn != NULL && fn->tag == PRIM) return fn->prim(values);
    if (fn == NULL || fn->tag != LAMBDA) Die("not a function");
    Env* scope = gofin_malloc(sizeof *scope);
    if (scope == NULL) Die("gofin_malloc: %s", gofin_last_error());
    scope->parent = fn->env;
    for (Obj* p = fn->car; p != NULL; p = p->cdr, values = Cdr(values)) {
      scope->vars = Cons(Cons(p->car, Car(values)), scope->vars);
    }
    Obj* body = fn->cdr;
    for (; Cdr(body) != NULL; body = body->cdr) Eval(body->car, scope);
    x = Car(body);
    env = scope;
  }
}

/* ---- Primitives --------------------------------------------------------------------------- */

static Obj* Add(Obj* args) {
  long sum = 0;
  for (; args != NULL; args = args->cdr) sum += Num(args->car);
  return MakeNum(sum);
}
static Obj* Sub(Obj* args) {
  long n = Num(Car(args));
  if (Cdr(args) == NULL) return MakeNum(-n);
  for (args = args->cdr; args != NULL; args = args->cdr) n -= Num(args->car);
  return MakeNum(n);
}
static Obj* Mul(Obj* args) {
  long n = 1;
  for (; args != NULL; args = args->cdr) n *= Num(args->car);
  return MakeNum(n);
}
static Obj* Less(Obj* args) { return Num(Car(args)) < Num(Car(Cdr(args))) ? g_true : NULL; }
static Obj* NumEq(Obj* args) { return Num(Car(args)) == Num(Car(Cdr(args))) ? g_true : NULL; }
static Obj* ConsPrim(Obj* args) { return Cons(Car(args), Car(Cdr(args))); }
static Obj* CarPrim(Obj* args) { return Car(Car(args)); }
static Obj* CdrPrim(Obj* args) { return Cdr(Car(args)); }
static Obj* NullP(Obj* args) { return Car(args) == NULL ? g_true : NULL; }

/* ---- Printer ------------------------------------------------------------------------------ */

typedef struct Buf {
  char data[4096];
  size_t len;
} Buf;

static void Append(Buf* b, const char* s) {
  size_t n = strlen(s);
  if (b->len + n >= sizeof b->data) Die("output too long");
  memcpy(b->data + b->len, s, n + 1);
  b->len += n;
}

static void Print(Obj* x, Buf* out) {
  char num[32];
  if (x == NULL) {
    Append(out, "()");
  } else if (x->tag == NUM) {
    snprintf(num, sizeof num, "%ld", x->num);
    Append(out, num);
  } else if (x->tag == SYM) {
    Append(out, x->name);
  } else if (x->tag == CONS) {
    Append(out, "(");
    for (;;) {
      Print(x->car, out);
      x = x->cdr;
      if (x == NULL) break;
      if (x->tag != CONS) {
        Append(out, " . ");
        Print(x, out);
        break;
      }
      Append(out, " ");
    }
    Append(out, ")");
  } else {
    Append(out, x->tag == LAMBDA ? "#<lambda>" : "#<primitive>");
  }
}

static void Init(void) {
  g_quote = Intern("quote", 5);
  g_if = Intern("if", 2);
  g_lambda = Intern("lambda", 6);
  g_define = Intern("define", 6);
  g_true = Intern("t", 1);
  g_global = gofin_malloc(sizeof *g_global);
  if (g_global == NULL) Die("gofin_malloc: %s", gofin_last_error());
  static const struct {
    const char* name;
    Prim fn;
  } prims[] = {{"+", Add},       {"-", Sub},       {"*", Mul},
               {"<", Less},      {"=", NumEq},     {"cons", ConsPrim},
               {"car", CarPrim}, {"cdr", CdrPrim}, {"null?", NullP}};
  for (size_t i = 0; i < sizeof prims / sizeof prims[0]; ++i) {
    Obj* p = NewObj(PRIM);
    p->prim = prims[i].fn;
    Define(g_global, Intern(prims[i].name, strlen(prims[i].name)), p);
  }
  Define(g_global, g_true, g_true);
}

static const char kProgram[] =
    "; Every call allocates a scope, the argument list and boxed numbers: garbage on return.\n"
    "(define fib (lambda (n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2))))))\n"
    "(fib 20)\n"
    "; Lists of 100 cells, built and dropped 1000 times by a tail-recursive loop.\n"
    "(define range (lambda (a b) (if (< a b) (cons a (range (+ a 1) b)) '())))\n"
    "(define sum (lambda (xs) (if (null? xs) 0 (+ (car xs) (sum (cdr xs))))))\n"
    "(define repeat (lambda (i acc)\n"
    "  (if (< i 1) acc (repeat (- i 1) (+ acc (sum (range 0 100)))))))\n"
    "(repeat 1000 0)\n"
    "; Closures: each keeps the scope it was made in (its n) alive as long as it lives.\n"
    "(define make-adder (lambda (n) (lambda (x) (+ x n))))\n"
    "(define add5 (make-adder 5))\n"
    "(add5 37)\n"
    "; 1000 closures made and dropped.\n"
    "(define adders (lambda (i acc) (if (< i 1) acc (adders (- i 1) (+ acc ((make-adder i) "
    "1))))))\n"
    "(adders 1000 0)\n"
    "(range 0 10)\n";

/* Runs kProgram, printing each result and appending it to *results. noinline: the program's
 * pointers die with this frame, so the gofin_gc() after it can free them. */
__attribute__((noinline)) static void Run(Buf* results) {
  g_src = kProgram;
  for (;;) {
    SkipSpace();
    if (*g_src == '\0') return;
    Obj* expr = Read();
    Obj* value = Eval(expr, g_global);
    if (expr->tag == CONS && expr->car == g_define) continue;
    Buf line = {.len = 0};
    Print(value, &line);
    printf("   => %s\n", line.data);
    Append(results, line.data);
    Append(results, "\n");
  }
}

static void PrintStats(const char* when, const gofin_memstats* m) {
  printf("   [%s] num_gc=%llu heap_alloc=%llu KiB total_alloc=%llu KiB heap_objects=%llu\n", when,
         (unsigned long long)m->num_gc, (unsigned long long)(m->heap_alloc >> 10),
         (unsigned long long)(m->total_alloc >> 10), (unsigned long long)m->heap_objects);
}

int main(void) {
  printf("lisp.c: an interpreter in C whose cells and environments are garbage-collected\n");
  Init();
  gofin_memstats before, ran, after;
  gofin_read_memstats(&before);
  PrintStats("start", &before);

  printf("1. running the program\n");
  static Buf results; /* static: 4 KiB, and no GC pointers in it */
  Run(&results);
  gofin_read_memstats(&ran);
  PrintStats("after the program", &ran);

  /* Collect, then wait (bounded) for the cleanups of the closures it freed. */
  gofin_gc();
  if (!gofin_wait_cleanups(30LL * 1000 * 1000 * 1000)) Die("cleanups did not drain in 30 s");
  gofin_read_memstats(&after);
  PrintStats("after gofin_gc()", &after);

  long made = atomic_load(&g_closures_made);
  long freed = atomic_load(&g_closures_freed);
  printf("2. allocated %llu KiB, %llu automatic collections, %llu KiB still in use\n",
         (unsigned long long)((ran.total_alloc - before.total_alloc) >> 10),
         (unsigned long long)(ran.num_gc - before.num_gc),
         (unsigned long long)(after.heap_alloc >> 10));
  printf("3. closures made: %ld, freed (counted by their cleanups): %ld\n", made, freed);

  const char* expected = "6765\n4950000\n42\n501500\n(0 1 2 3 4 5 6 7 8 9)\n";
  if (strcmp(results.data, expected) != 0) Die("expected results:\n%s", expected);
  if (ran.num_gc == before.num_gc || after.heap_alloc * 4 > ran.total_alloc - before.total_alloc) {
    Die("expected automatic collections and most of the garbage reclaimed");
  }
  /* 1000 closures were garbage (the defined ones stay reachable from the global scope);
   * conservative scanning may keep a few: require 90%. */
  if (freed < 900) Die("expected at least 900 closures freed");
  printf("OK\n");
  return 0;
}
