// extern "C" face of the Verilated amf_ring_writer (see src/ring_writer.rs).
#include <cstdint>
#include "Vamf_ring_writer.h"
#include "verilated.h"

extern "C" {

struct amf_rw_io {
    uint8_t rst_n;
    uint8_t clear;
    uint8_t host_cons_valid;
    uint8_t entry_valid;
    uint8_t dma_req_ready;
    uint8_t dma_rsp_valid;
    uint8_t dma_rsp_error;
    uint8_t pad0;
    uint32_t size_log2;
    uint32_t host_cons;
    uint64_t base;
    uint32_t entry[8];
    // outputs
    uint8_t entry_ready;
    uint8_t dma_req_valid;
    uint8_t written;
    uint8_t error;
    uint8_t error_code;
    uint8_t pad1[3];
    uint32_t prod;
    uint32_t space;
    uint64_t dma_req_addr;
    uint32_t dma_req_data[8];
};

struct amf_rw {
    VerilatedContext ctx;
    Vamf_ring_writer* top;
};

void* amf_rw_new() {
    auto* s = new amf_rw;
    s->ctx.threads(1);
    // Verilator keeps a per-thread "current context" that scopes register with; several models
    // in one thread each need theirs current whenever they are built, run or destroyed.
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_ring_writer{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_rw_free(void* p) {
    auto* s = static_cast<amf_rw*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

void amf_rw_cycle(void* p, amf_rw_io* io) {
    auto* s = static_cast<amf_rw*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->clear_i = io->clear;
    t->base_i = io->base;
    t->size_log2_i = io->size_log2;
    t->host_cons_valid_i = io->host_cons_valid;
    t->host_cons_i = io->host_cons;
    t->entry_valid_i = io->entry_valid;
    for (int i = 0; i < 8; i++) t->entry_i[i] = io->entry[i];
    t->dma_req_ready_i = io->dma_req_ready;
    t->dma_rsp_valid_i = io->dma_rsp_valid;
    t->dma_rsp_error_i = io->dma_rsp_error;
    t->eval();
    io->entry_ready = t->entry_ready_o;
    io->dma_req_valid = t->dma_req_valid_o;
    io->dma_req_addr = t->dma_req_addr_o;
    for (int i = 0; i < 8; i++) io->dma_req_data[i] = t->dma_req_data_o[i];
    io->written = t->written_o;
    io->error = t->error_o;
    io->error_code = t->error_code_o;
    io->prod = t->prod_o;
    io->space = t->space_o;
    t->clk_i = 1;
    t->eval();
    t->clk_i = 0;
    t->eval();
}

}
