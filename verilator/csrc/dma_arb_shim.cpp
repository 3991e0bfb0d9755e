// extern "C" face of the Verilated amf_dma_arb with 3 clients (see src/dma_arb.rs).
#include <cstdint>
#include "Vamf_dma_arb.h"
#include "verilated.h"

extern "C" {

struct amf_da_io {
    uint8_t rst_n;
    uint8_t req_valid;   // bit per client
    uint8_t req_write;   // bit per client
    uint8_t dma_req_ready;
    uint8_t dma_rsp_valid;
    uint8_t dma_rsp_error;
    uint8_t pad0[2];
    uint64_t req_addr[3];
    uint8_t req_bytes[3];
    uint8_t pad1[5];
    uint32_t req_wdata[3][8];
    uint32_t dma_rsp_rdata[8];
    // outputs
    uint8_t req_ready;
    uint8_t rsp_valid;
    uint8_t rsp_error;
    uint8_t dma_req_valid;
    uint8_t dma_req_write;
    uint8_t dma_req_bytes;
    uint8_t pad2[2];
    uint64_t dma_req_addr;
    uint32_t dma_req_wdata[8];
    uint32_t rsp_rdata[8];
};

struct amf_da {
    VerilatedContext ctx;
    Vamf_dma_arb* top;
};

void* amf_da_new() {
    auto* s = new amf_da;
    s->ctx.threads(1);
    Verilated::threadContextp(&s->ctx);
    s->top = new Vamf_dma_arb{&s->ctx};
    s->top->clk_i = 0;
    s->top->rst_ni = 0;
    s->top->eval();
    return s;
}

void amf_da_free(void* p) {
    auto* s = static_cast<amf_da*>(p);
    Verilated::threadContextp(&s->ctx);
    s->top->final();
    delete s->top;
    delete s;
}

void amf_da_cycle(void* p, amf_da_io* io) {
    auto* s = static_cast<amf_da*>(p);
    Verilated::threadContextp(&s->ctx);
    auto* t = s->top;
    t->rst_ni = io->rst_n;
    t->req_valid_i = io->req_valid;
    t->req_write_i = io->req_write;
    // Packed arrays: client c's field at bits [c*W +: W].
    for (int w = 0; w < 6; w++) t->req_addr_i[w] = 0;
    for (int c = 0; c < 3; c++) {
        t->req_addr_i[2 * c] = (uint32_t)io->req_addr[c];
        t->req_addr_i[2 * c + 1] = (uint32_t)(io->req_addr[c] >> 32);
    }
    t->req_bytes_i = (uint32_t)(io->req_bytes[0] & 63) | (uint32_t)(io->req_bytes[1] & 63) << 6 |
                     (uint32_t)(io->req_bytes[2] & 63) << 12;
    for (int c = 0; c < 3; c++)
        for (int w = 0; w < 8; w++) t->req_wdata_i[8 * c + w] = io->req_wdata[c][w];
    t->dma_req_ready_i = io->dma_req_ready;
    t->dma_rsp_valid_i = io->dma_rsp_valid;
    t->dma_rsp_error_i = io->dma_rsp_error;
    for (int w = 0; w < 8; w++) t->dma_rsp_rdata_i[w] = io->dma_rsp_rdata[w];
    t->eval();
    io->req_ready = t->req_ready_o;
    io->rsp_valid = t->rsp_valid_o;
    io->rsp_error = t->rsp_error_o;
    for (int w = 0; w < 8; w++) io->rsp_rdata[w] = t->rsp_rdata_o[w];
    io->dma_req_valid = t->dma_req_valid_o;
    io->dma_req_write = t->dma_req_write_o;
    io->dma_req_addr = t->dma_req_addr_o;
    io->dma_req_bytes = t->dma_req_bytes_o;
    for (int w = 0; w < 8; w++) io->dma_req_wdata[w] = t->dma_req_wdata_o[w];
    t->clk_i = 1;
    t->eval();
    t->clk_i = 0;
    t->eval();
}

}
