// lisp: a tiny Lisp interpreter whose cons cells, numbers, closures and environments live in
// gofin's garbage-collected heap, so the interpreter never frees anything itself.
//
// Go idiom: a Go program allocates with new(T) / &T{...} and lets the collector reclaim what is
// unreachable. Here every Lisp value is a gofin::New<Obj>() and every call frame a
// gofin::New<Env>(); the collector runs when the heap has grown enough (GOGC pacing, like Go)
// and frees the garbage a running program leaves behind.
//
// The language: integers, symbols, lists, (quote x) and 'x, (if c a b), (lambda (params) body...)
// with closures, (define name value), and the primitives + - * < = cons car cdr null?.
//
// Where GC pointers may be kept, and why it works:
// - On the stack and in registers: gofin scans every thread's stack conservatively, so the
//   interpreter's C++ locals (Obj* x, Env* env, ...) keep their objects alive with no handles.
// - In globals (data and bss): scanned too (g_quote below).
// - In the GC heap: Obj and Env are scanned, so a list keeps its cells alive.
// - In malloc memory (std::unordered_map, std::vector, new): NOT scanned. A pointer kept only
//   there does not keep its object alive; root it (gofin::Root<T>, gofin::AddRoots) or use
//   gofin::Allocator<T> for the container.
#include <cstdio>
#include <cstdlib>
#include <gofin/gofin.hpp>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>

namespace {

struct Obj;
struct Env;
using Prim = Obj* (*)(Obj* args);

enum class Tag { kNum, kSym, kCons, kLambda, kPrim };

// Every Lisp value. Trivially destructible: the collector frees it without running any code.
// The empty list () is nullptr.
struct Obj {
  Tag tag;
  long num = 0;                // kNum
  const char* name = nullptr;  // kSym: its name
  Prim prim = nullptr;         // kPrim
  Obj* car = nullptr;          // kCons; kLambda: the parameter list
  Obj* cdr = nullptr;          // kCons; kLambda: the body (a list of expressions)
  Env* env = nullptr;          // kLambda: the environment the closure captured
};

// One scope: a list of (symbol . value) pairs, and the enclosing scope.
struct Env {
  Obj* vars = nullptr;
  Env* parent = nullptr;
};

// The symbol table maps names to symbol objects, so that a symbol is compared by address.
// The map's nodes are malloc memory, which gofin does not scan: each value is a gofin::Root,
// a registered slot that keeps its symbol alive. (Symbols are never freed, as in most Lisps.)
// A symbol's name points to the map's key: unordered_map nodes never move.
std::unordered_map<std::string, gofin::Root<Obj>> g_symbols;

// The global environment, in a Root for the same reason: nothing else points to it.
gofin::Root<Env> g_global;

// The special forms' symbols. Globals are roots too (the symbols are also in g_symbols).
Obj* g_quote;
Obj* g_if;
Obj* g_lambda;
Obj* g_define;
Obj* g_true;

[[noreturn]] void Fail(const std::string& what) { throw std::runtime_error(what); }

Obj* MakeNum(long n) {
  Obj* o = gofin::New<Obj>(Tag::kNum);
  o->num = n;
  return o;
}

Obj* Cons(Obj* car, Obj* cdr) {
  Obj* o = gofin::New<Obj>(Tag::kCons);
  o->car = car;
  o->cdr = cdr;
  return o;
}

Obj* Intern(std::string_view name) {
  auto [it, inserted] = g_symbols.try_emplace(std::string(name));
  if (inserted) {
    Obj* sym = gofin::New<Obj>(Tag::kSym);
    sym->name = it->first.c_str();
    it->second = sym;
  }
  return it->second.get();
}

Obj* Car(Obj* x) {
  if (x == nullptr || x->tag != Tag::kCons) Fail("car of a non-list");
  return x->car;
}
Obj* Cdr(Obj* x) {
  if (x == nullptr || x->tag != Tag::kCons) Fail("cdr of a non-list");
  return x->cdr;
}
long Num(Obj* x) {
  if (x == nullptr || x->tag != Tag::kNum) Fail("not a number");
  return x->num;
}

// ---- Reader: text to s-expressions ----------------------------------------------------------

class Reader {
 public:
  explicit Reader(std::string_view src) : src_(src) {}

  bool AtEnd() {
    SkipSpace();
    return pos_ >= src_.size();
  }

  Obj* Read() {
    SkipSpace();
    if (pos_ >= src_.size()) Fail("unexpected end of input");
    const char c = src_[pos_];
    if (c == '(') {
      ++pos_;
      return ReadListTail();
    }
    if (c == ')') Fail("unexpected )");
    if (c == '\'') {
      ++pos_;
      return Cons(g_quote, Cons(Read(), nullptr));
    }
    return ReadAtom();
  }

 private:
  void SkipSpace() {
    while (pos_ < src_.size()) {
      if (src_[pos_] == ';') {
        while (pos_ < src_.size() && src_[pos_] != '\n') ++pos_;
      } else if (src_[pos_] == ' ' || src_[pos_] == '\n' || src_[pos_] == '\t') {
        ++pos_;
      } else {
        break;
      }
    }
  }

  // The elements up to ')'. head and tail are locals, on the stack: they keep the list built
  // so far alive while Read() allocates the next element.
  Obj* ReadListTail() {
    Obj* head = nullptr;
    Obj* tail = nullptr;
    for (;;) {
      SkipSpace();
      if (pos_ >= src_.size()) Fail("missing )");
      if (src_[pos_] == ')') {
        ++pos_;
        return head;
      }
      Obj* cell = Cons(Read(), nullptr);
      if (head == nullptr) {
        head = cell;
      } else {
        tail->cdr = cell;
      }
      tail = cell;
    }
  }

  Obj* ReadAtom() {
    const std::size_t start = pos_;
    while (pos_ < src_.size() &&
           std::string_view(" \n\t()';").find(src_[pos_]) == std::string_view::npos) {
      ++pos_;
    }
    const std::string token(src_.substr(start, pos_ - start));
    char* end = nullptr;
    const long n = std::strtol(token.c_str(), &end, 10);
    if (end != token.c_str() && *end == '\0') return MakeNum(n);
    return Intern(token);
  }

  std::string_view src_;
  std::size_t pos_ = 0;
};

// ---- Evaluator -----------------------------------------------------------------------------

Obj* Lookup(Obj* sym, Env* env) {
  for (; env != nullptr; env = env->parent) {
    for (Obj* v = env->vars; v != nullptr; v = v->cdr) {
      if (v->car->car == sym) return v->car->cdr;
    }
  }
  Fail(std::string("unbound symbol ") + sym->name);
}

void Define(Env* env, Obj* sym, Obj* value) {
  for (Obj* v = env->vars; v != nullptr; v = v->cdr) {
    if (v->car->car == sym) {
      v->car->cdr = value;
      return;
    }
  }
  env->vars = Cons(Cons(sym, value), env->vars);
}

Obj* Eval(Obj* x, Env* env);

Obj* EvalList(Obj* list, Env* env) {
  Obj* head = nullptr;
  Obj* tail = nullptr;
  for (; list != nullptr; list = Cdr(list)) {
    Obj* cell = Cons(Eval(list->car, env), nullptr);
    if (head == nullptr) {
      head = cell;
    } else {
      tail->cdr = cell;
    }
    tail = cell;
  }
  return head;
}

// A loop rather than recursion for the forms in tail position (if, a function's last body
// expression), so that a tail-recursive Lisp loop runs in constant C++ stack.
Obj* Eval(Obj* x, Env* env) {
  for (;;) {
    if (x == nullptr) return nullptr;
    if (x->tag == Tag::kSym) return Lookup(x, env);
    if (x->tag != Tag::kCons) return x;  // numbers and functions evaluate to themselves

    Obj* op = x->car;
    Obj* args = x->cdr;
    if (op == g_quote) return Car(args);
    if (op == g_if) {
      Obj* rest = Cdr(args);
      x = Eval(Car(args), env) != nullptr ? Car(rest) : (Cdr(rest) ? Car(Cdr(rest)) : nullptr);
      continue;
    }
    if (op == g_lambda) {
      Obj* fn = gofin::New<Obj>(Tag::kLambda);
      fn->car = Car(args);
      fn->cdr = Cdr(args);
      fn->env = env;  // the closure: the environment stays alive as long as the function
      return fn;
    }
    if (op == g_define) {
      Obj* value = Eval(Car(Cdr(args)), env);
      Define(env, Car(args), value);
      return Car(args);
    }

    Obj* fn = Eval(op, env);
    Obj* values = EvalList(args, env);
    if (fn != nullptr && fn->tag == Tag::kPrim) return fn->prim(values);
    if (fn == nullptr || fn->tag != Tag::kLambda) Fail("not a function");
    // A new scope per call: garbage as soon as the call returns, unless a closure captured it.
    Env* scope = gofin::New<Env>();
    scope->parent = fn->env;
    for (Obj* p = fn->car; p != nullptr; p = p->cdr, values = Cdr(values)) {
      scope->vars = Cons(Cons(p->car, Car(values)), scope->vars);
    }
    Obj* body = fn->cdr;
    for (; Cdr(body) != nullptr; body = body->cdr) Eval(body->car, scope);
    x = Car(body);
    env = scope;
  }
}

// ---- Primitives ----------------------------------------------------------------------------

Obj* Add(Obj* args) {
  long sum = 0;
  for (; args != nullptr; args = args->cdr) sum += Num(args->car);
  return MakeNum(sum);
}
Obj* Sub(Obj* args) {
  long n = Num(Car(args));
  if (Cdr(args) == nullptr) return MakeNum(-n);
  for (args = args->cdr; args != nullptr; args = args->cdr) n -= Num(args->car);
  return MakeNum(n);
}
Obj* Mul(Obj* args) {
  long n = 1;
  for (; args != nullptr; args = args->cdr) n *= Num(args->car);
  return MakeNum(n);
}
Obj* Less(Obj* args) { return Num(Car(args)) < Num(Car(Cdr(args))) ? g_true : nullptr; }
Obj* NumEq(Obj* args) { return Num(Car(args)) == Num(Car(Cdr(args))) ? g_true : nullptr; }
Obj* ConsPrim(Obj* args) { return Cons(Car(args), Car(Cdr(args))); }
Obj* CarPrim(Obj* args) { return Car(Car(args)); }
Obj* CdrPrim(Obj* args) { return Cdr(Car(args)); }
Obj* NullP(Obj* args) { return Car(args) == nullptr ? g_true : nullptr; }

void Print(Obj* x, std::string& out) {
  if (x == nullptr) {
    out += "()";
  } else if (x->tag == Tag::kNum) {
    out += std::to_string(x->num);
  } else if (x->tag == Tag::kSym) {
    out += x->name;
  } else if (x->tag == Tag::kCons) {
    out += '(';
    for (;;) {
      Print(x->car, out);
      x = x->cdr;
      if (x == nullptr) break;
      if (x->tag != Tag::kCons) {
        out += " . ";
        Print(x, out);
        break;
      }
      out += ' ';
    }
    out += ')';
  } else {
    out += x->tag == Tag::kLambda ? "#<lambda>" : "#<primitive>";
  }
}

void Init() {
  g_quote = Intern("quote");
  g_if = Intern("if");
  g_lambda = Intern("lambda");
  g_define = Intern("define");
  g_true = Intern("t");
  g_global = gofin::New<Env>();
  const std::pair<const char*, Prim> prims[] = {
      {"+", Add},         {"-", Sub},       {"*", Mul},       {"<", Less},     {"=", NumEq},
      {"cons", ConsPrim}, {"car", CarPrim}, {"cdr", CdrPrim}, {"null?", NullP}};
  for (const auto& [name, fn] : prims) {
    Obj* p = gofin::New<Obj>(Tag::kPrim);
    p->prim = fn;
    Define(g_global.get(), Intern(name), p);
  }
  Define(g_global.get(), g_true, g_true);
}

constexpr const char* kProgram = R"lisp(
; Every call allocates a scope, the argument list and boxed numbers: all garbage on return.
(define fib (lambda (n) (if (< n 2) n (+ (fib (- n 1)) (fib (- n 2))))))
(fib 20)

; Lists of 100 cells, built and dropped 1000 times by a tail-recursive loop.
(define range (lambda (a b) (if (< a b) (cons a (range (+ a 1) b)) '())))
(define sum (lambda (xs) (if (null? xs) 0 (+ (car xs) (sum (cdr xs))))))
(define repeat (lambda (i acc) (if (< i 1) acc (repeat (- i 1) (+ acc (sum (range 0 100)))))))
(repeat 1000 0)

; A closure keeps the scope it was made in (n = 5) alive as long as the closure lives.
(define make-adder (lambda (n) (lambda (x) (+ x n))))
(define add5 (make-adder 5))
(add5 37)

; 1000 closures made and dropped.
(define adders (lambda (i acc) (if (< i 1) acc (adders (- i 1) (+ acc ((make-adder i) 1))))))
(adders 1000 0)
(range 0 10)
)lisp";

// Runs kProgram and returns its printed results, one per line. noinline: the program's
// pointers die with this frame, so the GC() after it can free them.
[[gnu::noinline]] std::string Run() {
  std::string results;
  Reader reader(kProgram);
  while (!reader.AtEnd()) {
    Obj* expr = reader.Read();
    Obj* value = Eval(expr, g_global.get());
    if (expr->tag == Tag::kCons && expr->car == g_define) continue;
    std::string line;
    Print(value, line);
    std::printf("   => %s\n", line.c_str());
    results += line + "\n";
  }
  return results;
}

void PrintStats(const char* when, const gofin::MemStats& m) {
  std::printf("   [%s] NumGC=%llu HeapAlloc=%llu KiB TotalAlloc=%llu KiB HeapObjects=%llu\n", when,
              static_cast<unsigned long long>(m.NumGC),
              static_cast<unsigned long long>(m.HeapAlloc >> 10),
              static_cast<unsigned long long>(m.TotalAlloc >> 10),
              static_cast<unsigned long long>(m.HeapObjects));
}

}  // namespace

int main() {
  std::printf("lisp: an interpreter whose cells and environments are garbage-collected\n");
  Init();
  const gofin::MemStats before = gofin::ReadMemStats();
  PrintStats("start", before);

  std::printf("1. running the program\n");
  std::string results;
  try {
    results = Run();
  } catch (const std::exception& e) {
    std::printf("FAIL: lisp error: %s\n", e.what());
    return 1;
  }
  const gofin::MemStats ran = gofin::ReadMemStats();
  PrintStats("after the program", ran);

  // What is still reachable: the symbols, the global environment and what it holds.
  gofin::GC();
  const gofin::MemStats after = gofin::ReadMemStats();
  PrintStats("after GC()", after);

  const unsigned long long allocated = (ran.TotalAlloc - before.TotalAlloc) >> 10;
  std::printf(
      "2. the program allocated %llu KiB; the collector ran %llu times while it ran and "
      "%llu KiB remain in use\n",
      allocated, static_cast<unsigned long long>(ran.NumGC - before.NumGC),
      static_cast<unsigned long long>(after.HeapAlloc >> 10));

  const char* expected = "6765\n4950000\n42\n501500\n(0 1 2 3 4 5 6 7 8 9)\n";
  if (results != expected) {
    std::printf("FAIL: expected results:\n%s", expected);
    return 1;
  }
  // The collector must have run on its own (pacing) and reclaimed most of what was allocated.
  if (ran.NumGC == before.NumGC || after.HeapAlloc * 4 > ran.TotalAlloc - before.TotalAlloc) {
    std::printf("FAIL: expected automatic collections and most of the garbage reclaimed\n");
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
