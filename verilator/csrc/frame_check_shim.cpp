// extern "C" face of the Verilated amf_frame_check (see src/frame_check.rs).
#include <cstdint>
#include "Vamf_frame_check.h"
#include "verilated.h"

extern "C" {

struct amf_fc_io {
    uint8_t rst_n;
    uint8_t in_valid;
    uint8_t node_id;
    uint8_t peers;
    uint32_t epoch;
    uint32_t key[4];
    uint32_t in_frame[12];  // bits 31:0 first: link frame, then seal
    uint8_t auth_en;
    uint8_t restart;
    uint8_t out_ready;
    uint8_t in_ready;
    uint8_t out_valid;
    uint8_t out_verdict;
    uint8_t busy;
    uint32_t out_frame[8];
};

struct amf_fc {
    VerilatedContext ctx;
    Vamf_frame_check* top;
};

void* amf_fc_new() {
    auto* s = new amf_fc;
    s->ctx.threads(1);
    // Verilator keeps a per-thread "current context" that scopes register with; several models
    // in one thread each need theirs current whenever they are built, run or destroyed.
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_frame_check{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_fc_free(void* p) {
    auto* s = static_cast<amf_fc*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

void amf_fc_cycle(void* p, amf_fc_io* io) {
    auto* s = static_cast<amf_fc*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->in_valid_i = io->in_valid;
    t->node_id_i = io->node_id;
    t->peers_i = io->peers;
    t->epoch_i = io->epoch;
    t->auth_en_i = io->auth_en;
    t->restart_i = io->restart;
    for (int i = 0; i < 4; i++) t->key_i[i] = io->key[i];
    for (int i = 0; i < 12; i++) t->in_frame_i[i] = io->in_frame[i];
    t->out_ready_i = io->out_ready;
    t->eval();
    io->in_ready = t->in_ready_o;
    io->out_valid = t->out_valid_o;
    io->out_verdict = t->out_verdict_o;
    io->busy = t->busy_o;
    for (int i = 0; i < 8; i++) io->out_frame[i] = t->out_frame_o[i];
    t->clk_i = 1;
    t->eval();
    t->clk_i = 0;
    t->eval();
}

}
