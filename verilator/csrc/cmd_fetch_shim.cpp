// extern "C" face of the Verilated amf_cmd_fetch (see src/cmd_fetch.rs).
#include <cstdint>
#include "Vamf_cmd_fetch.h"
#include "verilated.h"

extern "C" {

struct amf_cf_io {
    uint8_t rst_n;
    uint8_t clear;
    uint8_t enable;
    uint8_t doorbell;
    uint8_t out_ready;
    uint8_t dma_req_ready;
    uint8_t dma_rsp_valid;
    uint8_t dma_rsp_error;
    uint32_t size_log2;
    uint32_t doorbell_value;
    uint64_t base;
    uint64_t cons_addr;
    uint32_t dma_rsp_rdata[8];
    // outputs
    uint8_t out_valid;
    uint8_t dma_req_valid;
    uint8_t dma_req_write;
    uint8_t dma_req_bytes;
    uint8_t error;
    uint8_t error_code;
    uint8_t pad[2];
    uint32_t dma_req_wdata;
    uint32_t cons;
    uint64_t dma_req_addr;
    uint32_t out_cmd[8];
};

struct amf_cf {
    VerilatedContext ctx;
    Vamf_cmd_fetch* top;
};

void* amf_cf_new() {
    auto* s = new amf_cf;
    s->ctx.threads(1);
    // Verilator keeps a per-thread "current context" that scopes register with; several models
    // in one thread each need theirs current whenever they are built, run or destroyed.
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_cmd_fetch{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_cf_free(void* p) {
    auto* s = static_cast<amf_cf*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

void amf_cf_cycle(void* p, amf_cf_io* io) {
    auto* s = static_cast<amf_cf*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->clear_i = io->clear;
    t->enable_i = io->enable;
    t->base_i = io->base;
    t->size_log2_i = io->size_log2;
    t->cons_addr_i = io->cons_addr;
    t->doorbell_i = io->doorbell;
    t->doorbell_value_i = io->doorbell_value;
    t->out_ready_i = io->out_ready;
    t->dma_req_ready_i = io->dma_req_ready;
    t->dma_rsp_valid_i = io->dma_rsp_valid;
    t->dma_rsp_error_i = io->dma_rsp_error;
    for (int i = 0; i < 8; i++) t->dma_rsp_rdata_i[i] = io->dma_rsp_rdata[i];
    t->eval();
    io->out_valid = t->out_valid_o;
    for (int i = 0; i < 8; i++) io->out_cmd[i] = t->out_cmd_o[i];
    io->dma_req_valid = t->dma_req_valid_o;
    io->dma_req_write = t->dma_req_write_o;
    io->dma_req_addr = t->dma_req_addr_o;
    io->dma_req_bytes = t->dma_req_bytes_o;
    io->dma_req_wdata = t->dma_req_wdata_o;
    io->error = t->error_o;
    io->error_code = t->error_code_o;
    io->cons = t->cons_o;
    t->clk_i = 1;
    t->eval();
    t->clk_i = 0;
    t->eval();
}

}
