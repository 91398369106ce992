// TFLite-Micro runtime: a MicroInterpreter over the model in flash, with an op resolver that
// registers exactly the model's operators (generated op_resolver.h) and a static arena sized
// from the model card (generated model_data.h).
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
DsmnOpResolver resolver;
tflite::MicroInterpreter *interpreter = nullptr;
alignas(tflite::MicroInterpreter) uint8_t interpreter_storage[sizeof(tflite::MicroInterpreter)];
}  // namespace

extern "C" int runtime_init(void)
{
    tflite::InitializeTarget();
    const tflite::Model *model = tflite::GetModel(dsmn_model_data);
    if (model->version() != TFLITE_SCHEMA_VERSION)
        return 1;
    if (DsmnRegisterOps(resolver) != kTfLiteOk)
        return 2;
    // Placement new: no heap, and construction happens after the board is up.
    interpreter = new (interpreter_storage)
        tflite::MicroInterpreter(model, resolver, tensor_arena, sizeof tensor_arena);
    if (interpreter->AllocateTensors() != kTfLiteOk)
        return 3;
    return 0;
}

extern "C" int runtime_invoke(const int8_t *input, int8_t *output)
{
    if (interpreter == nullptr)
        return 4;
    TfLiteTensor *in = interpreter->input(0);
    TfLiteTensor *out = interpreter->output(0);
    std::memcpy(in->data.int8, input, in->bytes);
    if (interpreter->Invoke() != kTfLiteOk)
        return 5;
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
