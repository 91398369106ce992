// TFLite-Micro runtime: a MicroInterpreter over the model in flash, with an op resolver that
// registers exactly the model's operators (generated op_resolver.h) and a static arena sized
// from the model card (generated model_data.h).
//
// Bare metal, no C++ runtime: startup.c runs no .init_array and there is no crtbegin
// (-nostartfiles), so nothing here may be a global with a constructor or destructor. The
// resolver and the interpreter are built by placement new in runtime_init() into static
// storage, and never destroyed. No heap: the C++ runtime hooks that would reach newlib's malloc,
// raise or printf (abort, __assert_func, __cxa_pure_virtual, operator delete) are defined
// below to stop at a breakpoint, where a debugger sees them.
#include <cstring>
#include <new>

#include "model_data.h"
#include "op_resolver.h"
#include "runtime.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/system_setup.h"
#include "tensorflow/lite/schema/schema_generated.h"

namespace {
alignas(16) uint8_t tensor_arena[DSMN_TFLM_ARENA_BYTES] __attribute__((section(".arena")));
alignas(DsmnOpResolver) uint8_t resolver_storage[sizeof(DsmnOpResolver)];
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
tflite::MicroInterpreter *interpreter = nullptr;
char error_text[96];

[[noreturn]] void halt()
{
    for (;;)
        __asm volatile("bkpt #1");
}

const char *status_name(TfLiteStatus s)
{
    switch (s) {
    case kTfLiteOk: return "kTfLiteOk";
    case kTfLiteError: return "kTfLiteError";
    case kTfLiteDelegateError: return "kTfLiteDelegateError";
    case kTfLiteApplicationError: return "kTfLiteApplicationError";
    case kTfLiteUnresolvedOps: return "kTfLiteUnresolvedOps";
    case kTfLiteCancelled: return "kTfLiteCancelled";
    default: return "TfLiteStatus";
    }
}

// error_text = "TFLM <what> failed: <status name> (<status>)<detail><number>"; no printf here.
char *append(char *p, const char *s)
{
    char *end = error_text + sizeof error_text - 1;
    while (*s && p < end)
        *p++ = *s++;
    *p = 0;
    return p;
}

char *append_u32(char *p, uint32_t v)
{
    char digits[11];
    int n = 0;
    do {
        digits[n++] = static_cast<char>('0' + v % 10);
        v /= 10;
    } while (v);
    char buf[12];
    for (int i = 0; i < n; i++)
        buf[i] = digits[n - 1 - i];
    buf[n] = 0;
    return append(p, buf);
}

int fail(int code, const char *what, TfLiteStatus status, const char *detail = "", uint32_t number = 0,
         bool with_number = false)
{
    char *p = append(error_text, "TFLM ");
    p = append(p, what);
    p = append(p, " failed: ");
    p = append(p, status_name(status));
    p = append(p, " (");
    p = append_u32(p, static_cast<uint32_t>(status));
    p = append(p, ")");
    p = append(p, detail);
    if (with_number)
        append_u32(p, number);
    return code;
}
}  // namespace

extern "C" int runtime_init(void)
{
    tflite::InitializeTarget();
    const tflite::Model *model = tflite::GetModel(dsmn_model_data);
    if (model->version() != TFLITE_SCHEMA_VERSION)
        return fail(1, "GetModel", kTfLiteError, ", schema version ", model->version(), true);
    DsmnOpResolver *resolver = new (resolver_storage) DsmnOpResolver();
    TfLiteStatus s = DsmnRegisterOps(*resolver);
    if (s != kTfLiteOk)
        return fail(2, "op registration", s);
    interpreter = new (interpreter_storage)
        tflite::MicroInterpreter(model, *resolver, tensor_arena, sizeof tensor_arena);
    s = interpreter->AllocateTensors();
    if (s != kTfLiteOk) {
        interpreter = nullptr;
        return fail(3, "AllocateTensors", s, ", arena bytes ", sizeof tensor_arena, true);
    }
    return 0;
}

extern "C" int runtime_invoke(const int8_t *input, int8_t *output)
{
    if (interpreter == nullptr)
        return 4;
    TfLiteTensor *in = interpreter->input(0);
    TfLiteTensor *out = interpreter->output(0);
    std::memcpy(in->data.int8, input, in->bytes);
    TfLiteStatus s = interpreter->Invoke();
    if (s != kTfLiteOk)
        return fail(5, "Invoke", s);
    std::memcpy(output, out->data.int8, out->bytes);
    return 0;
}

extern "C" uint32_t runtime_arena_bytes(void)
{
    return interpreter ? static_cast<uint32_t>(interpreter->arena_used_bytes()) : DSMN_TFLM_ARENA_BYTES;
}

// TFLM keeps its interpreter's persistent state in the arena: nothing to lend.
extern "C" void *runtime_scratch(uint32_t *bytes)
{
    *bytes = 0;
    return nullptr;
}

extern "C" const char *runtime_error_text(void) { return error_text; }

// The C/C++ runtime hooks TFLM and flatbuffers can reach; newlib's would pull raise, fiprintf,
// malloc and _sbrk into a firmware that has no heap and no stdio.
extern "C" [[noreturn]] void abort(void) { halt(); }
extern "C" [[noreturn]] void __assert_func(const char *, int, const char *, const char *) { halt(); }
extern "C" [[noreturn]] void __cxa_pure_virtual(void) { halt(); }
void operator delete(void *) noexcept { halt(); }
void operator delete(void *, std::size_t) noexcept { halt(); }
