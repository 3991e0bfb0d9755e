// extern "C" face of the Verilated amf_sharer_table: one call per clock cycle, inputs and
// outputs passed in a plain struct mirrored by src/sharer_table.rs.
#include <cstdint>
#include "Vamf_sharer_table.h"
#include "verilated.h"

extern "C" {

struct amf_st_io {
    // inputs
    uint8_t rst_n;
    uint8_t clear;
    uint8_t req_valid;
    uint8_t req_write;
    uint8_t req_sharers;
    uint8_t req_owner;
    uint64_t req_resource;
    // outputs
    uint8_t req_ready;
    uint8_t rsp_valid;
    uint8_t rsp_hit;
    uint8_t rsp_full;
    uint8_t rsp_sharers;
    uint8_t rsp_owner;
    uint8_t ready;
    uint32_t occupancy;
    uint32_t full_fallbacks;
};

struct amf_st {
    VerilatedContext ctx;
    Vamf_sharer_table* top;
};

void* amf_st_new() {
    auto* s = new amf_st;
    s->ctx.threads(1);
    // Verilator keeps a per-thread "current context" that scopes register with; several models
    // in one thread each need theirs current whenever they are built, run or destroyed.
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_sharer_table{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_st_free(void* p) {
    auto* s = static_cast<amf_st*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

static void read_outputs(Vamf_sharer_table* t, amf_st_io* io) {
    io->req_ready = t->req_ready_o;
    io->rsp_valid = t->rsp_valid_o;
    io->rsp_hit = t->rsp_hit_o;
    io->rsp_full = t->rsp_full_o;
    io->rsp_sharers = t->rsp_sharers_o;
    io->rsp_owner = t->rsp_owner_o;
    io->ready = t->ready_o;
    io->occupancy = t->occupancy_o;
    io->full_fallbacks = t->full_fallbacks_o;
}

// Applies the inputs, evaluates (outputs before the edge), then one rising and falling edge.
// On return `io` holds the outputs as they were when the inputs were sampled.
void amf_st_cycle(void* p, amf_st_io* io) {
    auto* s = static_cast<amf_st*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->clear_i = io->clear;
    t->req_valid_i = io->req_valid;
    t->req_write_i = io->req_write;
    t->req_sharers_i = io->req_sharers;
    t->req_owner_i = io->req_owner;
    t->req_resource_i = io->req_resource;
    t->eval();
    read_outputs(t, io);
    t->clk_i = 1;
    t->eval();
    t->clk_i = 0;
    t->eval();
}

}
