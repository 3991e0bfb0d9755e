// extern "C" face of the Verilated amf_frame_tx (see src/frame_tx.rs).
#include <cstdint>
#include "Vamf_frame_tx.h"
#include "verilated.h"

extern "C" {

struct amf_tx_io {
    uint8_t rst_n;
    uint8_t in_valid;
    uint8_t tx_ready;
    uint8_t in_ready;
    uint8_t tx_valid;
    uint8_t auth_en;
    uint8_t restart;
    uint8_t pad;
    uint32_t key[4];
    uint32_t in_frame[8];
    uint32_t tx_frame[12];
};

struct amf_tx {
    VerilatedContext ctx;
    Vamf_frame_tx* top;
};

void* amf_tx_new() {
    auto* s = new amf_tx;
    s->ctx.threads(1);
    // Verilator keeps a per-thread "current context" that scopes register with; several models
    // in one thread each need theirs current whenever they are built, run or destroyed.
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_frame_tx{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_tx_free(void* p) {
    auto* s = static_cast<amf_tx*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

void amf_tx_cycle(void* p, amf_tx_io* io) {
    auto* s = static_cast<amf_tx*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->in_valid_i = io->in_valid;
    t->tx_ready_i = io->tx_ready;
    t->auth_en_i = io->auth_en;
    t->restart_i = io->restart;
    for (int i = 0; i < 4; i++) t->key_i[i] = io->key[i];
    for (int i = 0; i < 8; i++) t->in_frame_i[i] = io->in_frame[i];
    t->eval();
    io->in_ready = t->in_ready_o;
    io->tx_valid = t->tx_valid_o;
    for (int i = 0; i < 12; i++) io->tx_frame[i] = t->tx_frame_o[i];
    t->clk_i = 1;
    t->eval();
    t->clk_i = 0;
    t->eval();
}

}
