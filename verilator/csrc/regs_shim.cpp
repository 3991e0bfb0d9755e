// extern "C" face of the Verilated amf_regs (see src/regs.rs).
#include <cstdint>
#include "Vamf_regs.h"
#include "verilated.h"

extern "C" {

struct amf_rg_io {
    // inputs
    uint8_t rst_n;
    uint8_t req_valid;
    uint8_t req_write;
    uint8_t ready;
    uint16_t req_addr;
    uint8_t error_code;
    uint8_t irq_set;
    uint32_t req_wdata;
    uint32_t occupancy;
    uint32_t full_fallbacks;
    uint32_t stats[11];
    // outputs
    uint8_t rsp_valid;
    uint8_t ctrl_enable;
    uint8_t soft_reset;
    uint8_t node_id;
    uint8_t peers;
    uint8_t cmd_doorbell;
    uint8_t irq;
    uint8_t pad;
    uint32_t rsp_rdata;
    uint32_t epoch;
    uint32_t doorbell_value;
    uint32_t auth_key[4];
    uint8_t auth_enable;
    uint8_t pad2[3];
};

struct amf_rg {
    VerilatedContext ctx;
    Vamf_regs* top;
};

void* amf_rg_new() {
    auto* s = new amf_rg;
    s->ctx.threads(1);
    // Verilator keeps a per-thread "current context" that scopes register with; several models
    // in one thread each need theirs current whenever they are built, run or destroyed.
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_regs{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_rg_free(void* p) {
    auto* s = static_cast<amf_rg*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

void amf_rg_cycle(void* p, amf_rg_io* io) {
    auto* s = static_cast<amf_rg*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->req_valid_i = io->req_valid;
    t->req_write_i = io->req_write;
    t->req_addr_i = io->req_addr;
    t->req_wdata_i = io->req_wdata;
    t->ready_i = io->ready;
    t->error_code_i = io->error_code;
    t->irq_set_i = io->irq_set;
    t->occupancy_i = io->occupancy;
    t->full_fallbacks_i = io->full_fallbacks;
    for (int i = 0; i < 11; i++) t->stats_i[i] = io->stats[i];
    t->eval();
    io->rsp_valid = t->rsp_valid_o;
    io->rsp_rdata = t->rsp_rdata_o;
    io->ctrl_enable = t->ctrl_enable_o;
    io->soft_reset = t->soft_reset_o;
    io->node_id = t->node_id_o;
    io->peers = t->peers_o;
    io->epoch = t->epoch_o;
    io->cmd_doorbell = t->cmd_doorbell_o;
    io->doorbell_value = t->doorbell_value_o;
    io->irq = t->irq_o;
    io->auth_enable = t->auth_enable_o;
    for (int i = 0; i < 4; i++) io->auth_key[i] = t->auth_key_o[i];
    t->clk_i = 1;
    t->eval();
    t->clk_i = 0;
    t->eval();
}

}
